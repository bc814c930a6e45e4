package consumer

import (
	"context"
	"errors"
	"fmt"

	"github.com/cenkalti/backoff/v4"

	"github.com/rabbitkit/rabbitkit/consumer/dedup"
	"github.com/rabbitkit/rabbitkit/internal/amqpconn"
)

// Retrying a store that is unavailable, on every commit path (plain and transactional handlers,
// exclusive and shared stores, expiry): the deliveries of the batch stay unacked, the worker
// backs off, and the same batch is committed again. See docs/DESIGN.md, "A store that is
// unavailable".

// retryCommit settles the commit of b whose first attempt returned err. Any error that does not
// wrap ErrStoreUnavailable fails the Run. While err wraps it, retryCommit calls undo (which
// restores the worker's window to what the store holds; nil when the attempt changed nothing of
// it), backs off, asks between whether to go on (nil: always), resets b and commits it again with
// ctx. It reports whether b committed; when not, the Run is stopping or has failed (w.broken), or
// between gave up, and the batch's deliveries stay unacked.
func (w *worker) retryCommit(ctx context.Context, b batch, err error, undo func() bool, between func() bool) bool {
	var bo backoff.BackOff
	for err != nil {
		if !errors.Is(err, ErrStoreUnavailable) {
			w.broken = true
			w.r.fail(wrapStore(err))
			return false
		}
		if undo != nil && !undo() {
			return false
		}
		if bo == nil {
			bo = w.storeBackoff()
		}
		if !w.storeRetry("commit", err, bo) {
			return false
		}
		if between != nil && !between() {
			return false
		}
		b.reset()
		err = b.commit(ctx)
	}
	return true
}

// rollback restores the window's streams keys to their committed states, after a commit that
// failed although Batch.States had already committed its marks to the window. It reports false,
// with the Run failed, when the store cannot be read.
func (w *worker) rollback(keys []dedup.Key) bool {
	if len(keys) == 0 {
		return true
	}
	r := w.r
	states, err := r.store.load(context.WithoutCancel(r.ctx))
	if err != nil {
		w.broken = true
		r.fail(wrapStore(fmt.Errorf("reading the store back after a failed commit: %w", err)))
		return false
	}
	stored := make(map[dedup.Key][]byte, len(keys))
	for _, k := range keys {
		stored[k] = nil
	}
	for _, st := range states {
		if _, ok := stored[st.Key]; ok {
			stored[st.Key] = st.State
		}
	}
	for k, st := range stored {
		if st == nil {
			w.tr.Drop(k)
			continue
		}
		if err := w.tr.Load(k, st); err != nil {
			w.broken = true
			r.fail(fmt.Errorf("%w: stream %s: %w", ErrStore, k, err))
			return false
		}
	}
	return true
}

// storeRetry handles a failed call to a store: an error worth retrying (ErrStoreUnavailable: a
// shared store's database, a full disk) is logged and counted and waited out with bo; any other
// error, or bo giving up, fails the run. It reports whether to try again.
func (w *worker) storeRetry(what string, err error, bo backoff.BackOff) bool {
	r := w.r
	if r.hctx.Err() != nil {
		return false // draining past DrainTimeout: unacked, redelivered
	}
	if !errors.Is(err, ErrStoreUnavailable) {
		w.broken = true
		r.fail(wrapStore(err))
		return false
	}
	d := bo.NextBackOff()
	if d == backoff.Stop {
		w.broken = true
		r.fail(wrapStore(fmt.Errorf("gave up retrying: %w", err)))
		return false
	}
	r.cfg.Metrics.Add(MetricStoreRetries, 1)
	switch {
	case errors.Is(err, ErrDiskFull):
		r.cfg.Logger.Error("consumer: the store's disk is full: nothing of the batch is acked; free space on it, the consumer resumes by itself", "op", what, "err", err, "retry_in", d)
	case errors.Is(err, ErrCommitUnknown):
		r.cfg.Metrics.Add(MetricCommitUnknown, 1)
		r.cfg.Logger.Warn("consumer: commit outcome unknown; committing the batch again (the dedup check decides what had committed)", "err", err, "retry_in", d)
	default:
		r.cfg.Logger.Warn("consumer: store unavailable; retrying", "op", what, "err", err, "retry_in", d)
	}
	return w.sleep(d)
}

func (w *worker) storeBackoff() backoff.BackOff {
	if f := w.r.cfg.StoreRetryBackoff; f != nil {
		return f()
	}
	return amqpconn.NewBackoff()
}
