package consumer

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/rabbitkit/rabbitkit/consumer/dedup"
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
// usual and its commit decides). It reports false when the Run failed.
func (w *worker) recordStart(it *item) (int64, bool) {
	ns, ok := w.recordStarts([]*item{it})
	return ns[0], ok
}

// recordStarts is recordStart for several items in one commit. Counting is best effort while the
// store is unavailable: the starts are then not recorded (0), and the commit that follows the
// handlers holds the batch, with its own retries, requeues and give-ups.
func (w *worker) recordStarts(its []*item) ([]int64, bool) {
	r := w.r
	ns := make([]int64, len(its))
	var b batch
	ctx := context.WithoutCancel(r.ctx) // exclusive: the store's goroutine may be inside States
	if r.store.shared() {
		ctx = r.hctx
		b = r.store.newBatch(r.hctx, len(its))
		for _, it := range its {
			it.started = true
			b.add(opSpec{key: it.key, stamp: it.stamp, start: true})
		}
	} else {
		w.settle() // the state written below includes what is in flight
		if w.broken {
			return ns, false
		}
		now := time.Now()
		for i, it := range its {
			it.started = true
			ns[i] = w.tr.Start(it.stamp, now)
		}
		w.keys = w.tr.TakeDirty(w.keys[:0])
		states := w.states(w.keys)
		b = r.store.newBatch(r.hctx, 0)
		b.setStates(func([]bool) []StreamState { return states })
	}
	err := b.commit(ctx)
	switch {
	case err == nil:
		if r.store.shared() {
			for i := range its {
				ns[i] = b.starts(i)
			}
		}
		return ns, true
	case errors.Is(err, ErrStoreUnavailable):
		r.cfg.Logger.Warn("consumer: could not record redelivered messages' handler starts (store unavailable); running them uncounted", "messages", len(its), "err", err)
		clear(ns)
		return ns, true
	default:
		w.broken = true
		r.fail(wrapStore(err))
		return ns, false
	}
}

// recordFirstStarts records, in one commit, the starts of the items of a batch that need one and
// have none recorded yet: after a crash the whole prefetch window comes back redelivered, and
// one commit per message would cost a drain of it twentyfold (BenchmarkDrainRedelivered). A
// group's count does not name which message was running when the process died, so every item
// of the group that did not finish has 1 after the crash. An item with a count is never grouped
// again: it is counted alone (processOnce), so only the message that is running at each crash
// gains a count from then on. The culprit is parked after as many crashes as before; a
// neighbour gains at most the one group count. Items of streams the window does not know are
// left to processOnce (Config.MaxStreams is checked there first), and so is everything when
// Config.Admit is set (it is asked there first). It reports false when the Run failed.
func (w *worker) recordFirstStarts(items []*item) bool {
	r := w.r
	if r.cfg.MaxCrashes <= 0 || r.cfg.Admit != nil {
		return true
	}
	var group []*item
	for _, it := range items {
		if it.stampErr != nil || it.gen != r.gen.Load() || !w.needsStart(it) || w.tr.Starts(it.stamp) > 0 {
			continue
		}
		v := w.tr.Classify(it.stamp)
		if v.Has(dedup.FlagNewStream) || v.Kind != dedup.KindNew && !(it.redrive && w.tr.IsParked(it.stamp)) {
			continue
		}
		group = append(group, it)
	}
	if len(group) < 2 {
		return true // one item: processOnce counts it alone, as cheaply
	}
	_, ok := w.recordStarts(group)
	return ok
}

// heldStreams is the number of streams in every worker's window: w's own now, the others' as of
// their last commit.
func (w *worker) heldStreams() int64 {
	return w.r.streamCount() - w.streams.Load() + int64(w.tr.Len())
}
