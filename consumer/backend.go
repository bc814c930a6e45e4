package consumer

import (
	"context"
	"time"

	"github.com/rabbitkit/rabbitkit/consumer/dedup"
	"github.com/rabbitkit/rabbitkit/metrics"
	"github.com/rabbitkit/rabbitkit/protocol"
)

// backend is the Run's view of its Store[T] and transactional handler. The Run and its workers are
// not generic: the store's transaction type T lives only in this file, where a typed handler
// becomes an Op[T].Effect. No value of T is ever converted to or from any.
type backend interface {
	claim(ctx context.Context) (release func(), err error)
	scope() Scope
	load(ctx context.Context) ([]StreamState, error)
	// transactional reports whether the Run has a TxHandler (RunTx) rather than a Handler (Run).
	transactional() bool
	// newBatch starts an empty batch; the handlers it runs get hctx.
	newBatch(hctx context.Context, n int) batch
	// shared reports a ScopeShared store: the worker's window is a cache refreshed with peek, and
	// the verdicts and events that count come back from commit.
	shared() bool
	peek(ctx context.Context, keys []dedup.Key) ([]StreamState, error)
}

// opSpec is an Op without its store's transaction type.
type opSpec struct {
	key     dedup.Key
	stamp   protocol.Stamp
	mark    bool
	hash    uint64
	park    bool // Op.Park
	redrive bool // Op.Redrive
	start   bool // Op.Start
	verdict dedup.Verdict
	msg     *Message // non-nil: run the transactional handler on it inside the transaction
}

// batch is a Batch[T] as the worker builds and reads it.
type batch interface {
	add(o opSpec) int // returns the op's index
	err(i int) error  // the op's Err after commit
	setStates(func(applied []bool) []StreamState)
	setExpire(now time.Time)
	reset() // clears what a failed commit left (Err, Verdict, Events) to commit the batch again
	commit(ctx context.Context) error
	verdict(i int) dedup.Verdict // the op's Verdict after commit (a shared store's decision)
	starts(i int) int64          // the op's Starts after commit (a shared store's count)
	events() []dedup.Event       // a shared store's events of the commit
}

type storeBackend[T any] struct {
	store Store[T]
	sh    SharedStore  // nil for an exclusive store
	h     TxHandler[T] // nil for Run
	rec   metrics.Recorder
}

func newBackend[T any](store Store[T], h TxHandler[T], rec metrics.Recorder) *storeBackend[T] {
	be := &storeBackend[T]{store: store, h: h, rec: rec}
	if store.Scope() == ScopeShared {
		be.sh, _ = store.(SharedStore) // NewWithStore checked it
	}
	return be
}

func (s *storeBackend[T]) shared() bool { return s.sh != nil }

func (s *storeBackend[T]) peek(ctx context.Context, keys []dedup.Key) ([]StreamState, error) {
	return s.sh.Peek(ctx, keys)
}

func (s *storeBackend[T]) claim(ctx context.Context) (func(), error) { return s.store.Claim(ctx) }
func (s *storeBackend[T]) scope() Scope                              { return s.store.Scope() }
func (s *storeBackend[T]) transactional() bool                       { return s.h != nil }

func (s *storeBackend[T]) load(ctx context.Context) ([]StreamState, error) {
	return s.store.Load(ctx)
}

func (s *storeBackend[T]) newBatch(hctx context.Context, n int) batch {
	return &typedBatch[T]{be: s, hctx: hctx, b: Batch[T]{Ops: make([]Op[T], 0, n)}}
}

type typedBatch[T any] struct {
	be       *storeBackend[T]
	hctx     context.Context
	b        Batch[T]
	verdicts []dedup.Verdict // as added, for reset
}

func (b *typedBatch[T]) add(o opSpec) int {
	op := Op[T]{Key: o.key, Stamp: o.stamp, Mark: o.mark, Hash: o.hash, Park: o.park, Redrive: o.redrive, Start: o.start, Verdict: o.verdict}
	if o.msg != nil {
		h, hctx, rec, msg := b.be.h, b.hctx, b.be.rec, o.msg
		op.Effect = func(tx T) error {
			start := time.Now()
			defer func() { rec.Observe(MetricHandlerSeconds, time.Since(start).Seconds()) }()
			return h(hctx, tx, msg)
		}
	}
	b.b.Ops = append(b.b.Ops, op)
	b.verdicts = append(b.verdicts, o.verdict)
	return len(b.b.Ops) - 1
}

func (b *typedBatch[T]) err(i int) error { return b.b.Ops[i].Err }

func (b *typedBatch[T]) setStates(f func([]bool) []StreamState) { b.b.States = f }

func (b *typedBatch[T]) setExpire(now time.Time) { b.b.Expire = now }

func (b *typedBatch[T]) reset() {
	for i := range b.b.Ops {
		b.b.Ops[i].Err, b.b.Ops[i].Verdict, b.b.Ops[i].Starts = nil, b.verdicts[i], 0
	}
	b.b.Events = nil
}

func (b *typedBatch[T]) commit(ctx context.Context) error { return b.be.store.Commit(ctx, &b.b) }

func (b *typedBatch[T]) verdict(i int) dedup.Verdict { return b.b.Ops[i].Verdict }

func (b *typedBatch[T]) starts(i int) int64 { return b.b.Ops[i].Starts }

func (b *typedBatch[T]) events() []dedup.Event { return b.b.Events }
