package consumer

import (
	"context"

	"github.com/rabbitkit/rabbitkit/consumer/dedup"
)

// StreamState is the persisted dedup state of one stream, as serialised by dedup.Tracker.AppendState.
// A Store treats State as opaque bytes.
type StreamState struct {
	Key   dedup.Key
	State []byte // nil in Batch.States output: delete the stream's stored state
}

// Effect is the work of a transactional handler, run by a Store inside the transaction that also
// records the dedup state. tx is the backend's transaction: *bbolt.Tx for BoltStore.
type Effect func(tx any) error

// Op is one message's part of a Batch.
type Op struct {
	Key    dedup.Key // the message's stream (without rk- headers: derived from exchange and routing key)
	Effect Effect    // nil: nothing to run (the message is only marked through Batch.States)
	Err    error     // set by Store.Commit: non-nil means this op was not applied
}

// Batch is the unit a Store commits atomically.
type Batch struct {
	Ops []Op
	// States, when not nil, is called inside the transaction once every kept op's effect has
	// succeeded, with applied[i] telling whether Ops[i] is being applied. It returns the stream
	// states to write in the same transaction. It is called at most once per Commit, on the store's
	// goroutine, while the caller of Commit waits, and only for the attempt that is then committed.
	States func(applied []bool) []StreamState
}

// Store keeps the dedup state durably. BoltStore is the default; other backends (say, a SQL
// database sharing the application's transaction) implement the same contract:
//
//   - Load returns every stream state committed so far.
//   - Commit applies a Batch atomically and durably: when it returns nil, every op whose Err is nil
//     has its effect committed together with the states returned by States, and all of it survives
//     a crash of the process (for BoltStore, of the machine too). An op whose Effect returns an
//     error (or panics) is rolled back and excluded, with Err set to that error; every later op of
//     the same Key in the same Batch is excluded too, with Err wrapping ErrSkipped (applying it
//     would reorder the stream's effects); the rest of the Batch is then committed without them.
//     A non-nil error from Commit means nothing of the Batch may be assumed committed, and the
//     caller stops using the store's state. Commit is safe for concurrent use; implementations
//     should group concurrent batches into one transaction.
//   - Close releases the store. It is idempotent.
type Store interface {
	Load(ctx context.Context) ([]StreamState, error)
	Commit(ctx context.Context, b *Batch) error
	Close() error
}
