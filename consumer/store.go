package consumer

import (
	"context"
	"fmt"
	"time"

	"github.com/rabbitkit/rabbitkit/consumer/dedup"
	"github.com/rabbitkit/rabbitkit/protocol"
)

// StreamState is the persisted dedup state of one stream, as serialised by dedup.Tracker.AppendState.
// A Store treats State as opaque bytes.
type StreamState struct {
	Key   dedup.Key
	State []byte // nil in Batch.States output: delete the stream's stored state
}

// Scope says who decides whether a stamp is new: the Run's in-memory window, or the store's
// transaction. See docs/DESIGN.md, "Stores".
type Scope uint8

const (
	// ScopeExclusive: one Run at a time owns the store's dedup state (Claim refuses a second one
	// with ErrStoreInUse, and the store locks it against other processes). The Run loads it once
	// (Load) into its in-memory dedup window, which is the authority from then on: the store writes
	// the states Batch.States returns and never second-guesses a verdict. BoltStore is exclusive.
	ScopeExclusive Scope = iota + 1
	// ScopeShared: any number of Runs, in any processes, commit to the same state concurrently
	// (competing consumers on one database). The store takes the dedup decision for every op with
	// Mark set inside its transaction, against the stream's state as read and locked there (rows
	// locked in dedup.Key order), records the marks there, sets Op.Verdict, and returns the dedup
	// events its decisions caused in Batch.Events; it also does the time-driven expiry of Batch.Expire
	// there, so that each gap is reported by the one Run whose transaction commits the report. The
	// Run's window is then only a cache, refreshed with SharedStore.Peek before each batch. Such
	// a store must implement SharedStore.
	ScopeShared
)

// String returns "exclusive" or "shared".
func (s Scope) String() string {
	switch s {
	case ScopeExclusive:
		return "exclusive"
	case ScopeShared:
		return "shared"
	}
	return fmt.Sprintf("scope(%d)", uint8(s))
}

// Op is one message's part of a Batch. T is the store's transaction type.
type Op[T any] struct {
	Key dedup.Key // the message's stream (without a stamp: derived from exchange and routing key)
	// Stamp is the message's stamp when Mark is set. Mark asks for the stamp to be recorded as
	// handled when the op is applied; Hash is dedup.BodyHash of its body, or 0.
	Stamp protocol.Stamp
	Mark  bool
	Hash  uint64
	// Park (with Mark) records the mark as a message parked after its handler failed, not applied
	// (dedup.Tracker.CommitParked), so that a re-driven copy can still be applied once.
	Park bool
	// Redrive (with Mark) says the message is a copy an operator re-drove from the parking queue
	// (protocol.HeaderRedrive), which the Run found parked in its window. A ScopeShared store
	// applies it, running Effect and removing the stamp from the parked set (dedup.Tracker.Unpark),
	// only if the stamp is still parked in the state it locked, and otherwise sets Verdict to
	// KindDuplicate and runs nothing. A ScopeExclusive store ignores Park and Redrive: the Run
	// records both in the states it hands to Batch.States.
	Redrive bool
	// Start (without Mark, Effect nil) asks the store to record that the handler of Stamp is about
	// to run (dedup.Tracker.Start) and to set Starts to the count, this start included, or 0 when
	// the stamp is not new (Verdict then says what it is). A ScopeExclusive store never gets it:
	// the Run counts in its window and commits the state. A mark of Stamp forgets the count.
	Start  bool
	Starts int64
	// Effect is the transactional handler's work, run inside the transaction that records the
	// dedup state. nil: nothing to run (a plain handler's mark, or a duplicate kept in order).
	Effect func(tx T) error
	// Verdict is the dedup decision for Stamp. The Run sets it from its window (KindNew for ops
	// with Mark, KindDuplicate for a duplicate kept in its stream's order); a ScopeShared store
	// replaces it with the decision taken in its transaction, and runs Effect only for KindNew.
	Verdict dedup.Verdict
	Err     error // set by Store.Commit: non-nil means this op was not applied
}

// Batch is the unit a Store commits atomically.
type Batch[T any] struct {
	Ops []Op[T]
	// States, when not nil, is called inside the transaction once every kept op's effect has
	// succeeded, with applied[i] telling whether Ops[i] is being applied. It returns the stream
	// states to write in the same transaction (a ScopeExclusive store writes them; a ScopeShared
	// store writes its own and may use them only as a hint). It is called at most once per Commit,
	// on the store's goroutine, while the caller of Commit waits, and only for the attempt that is
	// then committed.
	States func(applied []bool) []StreamState
	// Expire, when not zero, asks a ScopeShared store to do the time-driven expiry of dedup.Tracker
	// (gaps past their grace, retired epochs, idle streams) as of that time, in the same
	// transaction, for streams no other Run is expiring at that moment. A ScopeExclusive store
	// ignores it: the Run expires its own window and hands the result in States.
	Expire time.Time
	// Events is set by a ScopeShared store: the dedup events (gaps reported or given up, late
	// arrivals, epoch changes) caused by what this Commit committed, for the Run to report.
	Events []dedup.Event
}

// Store keeps the dedup state durably, with transactions of type T (*bbolt.Tx for BoltStore) in
// which transactional handlers run. BoltStore is the default; other backends (say, a SQL database
// holding the application's own tables) implement the same contract, and package
// consumer/storetest checks it:
//
//   - Claim reserves the store for one Run until release is called. A ScopeExclusive store
//     refuses a second claim while one is held, with ErrStoreInUse.
//   - Scope says who takes the dedup decision (ScopeExclusive or ScopeShared). It never changes.
//   - Load returns every stream state committed so far.
//   - Commit applies a Batch atomically and durably: when it returns nil, every op whose Err is nil
//     has its effect committed together with the dedup state, and all of it survives a crash of
//     the process (for BoltStore, of the machine too). An op whose Effect returns an error (or
//     panics, reported as ErrPanic) is rolled back and excluded, with Err set to that error; every
//     later op of the same Key in the same Batch is excluded too, with Err wrapping ErrSkipped
//     (applying it would reorder the stream's effects); the rest of the Batch is then committed
//     without them. A non-nil error from Commit means nothing of the Batch may be assumed
//     committed, and the caller stops using the store's state. Commit is safe for concurrent use;
//     implementations should group concurrent batches into one transaction.
//   - View runs fn in a read-only transaction, for reading what transactional handlers wrote.
//   - Close releases the store. It is idempotent; calls after it return ErrClosed.
type Store[T any] interface {
	Claim(ctx context.Context) (release func(), err error)
	Scope() Scope
	Load(ctx context.Context) ([]StreamState, error)
	Commit(ctx context.Context, b *Batch[T]) error
	View(ctx context.Context, fn func(tx T) error) error
	Close() error
}

// SharedStore is what a ScopeShared store adds to Store[T]; NewWithStore refuses a shared store
// without it.
//
//   - DedupConfig is the dedup.Config the store classifies with inside its transactions. The Run's
//     cache uses the same one, so Config.Dedup must be left zero with a shared store.
//   - Peek returns the committed states of the streams keys names (a key without state is left
//     out), read without locking anything. The Run refreshes its cache with it before it
//     classifies a batch, so that a redelivery of what another replica committed is known for a
//     duplicate before any handler runs, and a number far above a stale cache is not taken for a
//     suspicious jump.
//
// Commit errors that are worth retrying (the database unreachable, the connection lost, an
// unknown COMMIT outcome) wrap ErrStoreUnavailable, and ErrCommitUnknown when COMMIT was in
// flight; any other error stops the Run, as for an exclusive store.
type SharedStore interface {
	DedupConfig() dedup.Config
	Peek(ctx context.Context, keys []dedup.Key) ([]StreamState, error)
}
