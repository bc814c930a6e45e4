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
}

// opSpec is an Op without its store's transaction type.
type opSpec struct {
	key     dedup.Key
	stamp   protocol.Stamp
	mark    bool
	hash    uint64
	verdict dedup.Verdict
	msg     *Message // non-nil: run the transactional handler on it inside the transaction
}

// batch is a Batch[T] as the worker builds and reads it.
type batch interface {
	add(o opSpec) int // returns the op's index
	err(i int) error  // the op's Err after commit
	setStates(func(applied []bool) []StreamState)
	commit(ctx context.Context) error
}

type storeBackend[T any] struct {
	store Store[T]
	h     TxHandler[T] // nil for Run
	rec   metrics.Recorder
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
	be   *storeBackend[T]
	hctx context.Context
	b    Batch[T]
}

func (b *typedBatch[T]) add(o opSpec) int {
	op := Op[T]{Key: o.key, Stamp: o.stamp, Mark: o.mark, Hash: o.hash, Verdict: o.verdict}
	if o.msg != nil {
		h, hctx, rec, msg := b.be.h, b.hctx, b.be.rec, o.msg
		op.Effect = func(tx T) error {
			start := time.Now()
			defer func() { rec.Observe(MetricHandlerSeconds, time.Since(start).Seconds()) }()
			return h(hctx, tx, msg)
		}
	}
	b.b.Ops = append(b.b.Ops, op)
	return len(b.b.Ops) - 1
}

func (b *typedBatch[T]) err(i int) error { return b.b.Ops[i].Err }

func (b *typedBatch[T]) setStates(f func([]bool) []StreamState) { b.b.States = f }

func (b *typedBatch[T]) commit(ctx context.Context) error { return b.be.store.Commit(ctx, &b.b) }
