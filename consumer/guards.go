package consumer

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// Guards a delivery passes before its handler runs, besides dedup: Config.Admit (untrusted
// writers), Config.MaxStreams (the state's bound) and Config.MaxCrashes (handlers that kill the
// process). See docs/DESIGN.md, "start count, crash loop", and docs/OPERATIONS.md, "Untrusted
// writers".

// admit runs Config.Admit on e's delivery and, when it refuses, parks it (unaccounted). It
// reports whether the delivery goes on to dedup; when not, e.kind says whether it was parked.
func (w *worker) admit(e *entry) bool {
	r, it := w.r, e.it
	err := r.cfg.Admit(newMessage(&it.d, it.stamp, true, it.attempt+1))
	if err == nil {
		return true
	}
	r.cfg.Metrics.Add(MetricRefused, 1)
	w.park(e, fmt.Sprintf("refused by Config.Admit: %v", err), false)
	return false
}

// needsStart reports whether it's handler start is to be recorded before it runs: a redelivery
// (only a delivered message can have crashed a process) seen for the first time by this Run.
func (w *worker) needsStart(it *item) bool {
	return w.r.cfg.MaxCrashes > 0 && it.d.Redelivered && !it.started && it.attempt == 0 && it.lastErr == nil
}

// recordStart durably records that it's handler is about to run and returns the count, this
// start included (0 when the store found the stamp committed meanwhile: it is then handled as
// usual and its commit decides). Counting is best effort while the store is unavailable: the
// start is then not recorded (0), and the commit that follows the handler holds the batch, with
// its own retries, requeues and give-ups. It reports false when the Run failed.
func (w *worker) recordStart(it *item) (int64, bool) {
	r := w.r
	it.started = true
	var b batch
	var n int64
	ctx := context.WithoutCancel(r.ctx) // exclusive: the store's goroutine may be inside States
	if r.store.shared() {
		ctx = r.hctx
		b = r.store.newBatch(r.hctx, 1)
		b.add(opSpec{key: it.key, stamp: it.stamp, start: true})
	} else {
		w.settle() // the state written below includes what is in flight
		if w.broken {
			return 0, false
		}
		n = w.tr.Start(it.stamp, time.Now())
		w.keys = w.tr.TakeDirty(w.keys[:0])
		states := w.states(w.keys)
		b = r.store.newBatch(r.hctx, 0)
		b.setStates(func([]bool) []StreamState { return states })
	}
	err := b.commit(ctx)
	switch {
	case err == nil:
		if r.store.shared() {
			n = b.starts(0)
		}
		return n, true
	case errors.Is(err, ErrStoreUnavailable):
		r.cfg.Logger.Warn("consumer: could not record a redelivered message's handler start (store unavailable); running it uncounted", "stamp", it.stamp.String(), "err", err)
		return 0, true
	default:
		w.broken = true
		r.fail(wrapStore(err))
		return 0, false
	}
}

// heldStreams is the number of streams in every worker's window: w's own now, the others' as of
// their last commit.
func (w *worker) heldStreams() int64 {
	return w.r.streamCount() - w.streams.Load() + int64(w.tr.Len())
}
