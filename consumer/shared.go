package consumer

import (
	"cmp"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/cenkalti/backoff/v4"

	"github.com/rabbitkit/rabbitkit/consumer/dedup"
)

// The worker's side of a ScopeShared store (docs/DESIGN.md, "Stores"). The worker's tracker is a
// cache of one batch's streams: refresh loads them from the store before they are classified (and
// forget drops them after), so a
// redelivery of what another replica committed is dropped before any handler runs. The verdict
// that counts is the one the store takes under its row locks inside Commit; commitShared acts on
// it, and on the store's events, never on the cache's. Shared batches are committed
// synchronously (no commit overlaps the next batch's refresh).

// refresh loads the stored state of the streams of items into the cache. It retries a store that
// is unavailable with backoff; it reports false when the run is stopping or failed.
func (w *worker) refresh(items []*item) bool {
	r := w.r
	keys := w.keys[:0]
	for _, it := range items {
		if it.stampErr == nil && it.gen == r.gen.Load() {
			keys = append(keys, it.key)
		}
	}
	if len(keys) == 0 {
		return true
	}
	slices.SortFunc(keys, compareKeys)
	keys = slices.Compact(keys)
	w.keys = keys
	var bo backoff.BackOff
	for {
		states, err := r.store.peek(r.hctx, keys)
		if err == nil {
			got := make(map[dedup.Key]struct{}, len(states))
			for _, st := range states {
				if err := w.tr.Load(st.Key, st.State); err != nil {
					w.broken = true
					r.fail(fmt.Errorf("%w: stream %s: %w", ErrStore, st.Key, err))
					return false
				}
				got[st.Key] = struct{}{}
			}
			for _, k := range keys {
				if _, ok := got[k]; !ok {
					w.tr.Drop(k)
				}
			}
			return true
		}
		if bo == nil {
			bo = w.storeBackoff()
		}
		if !w.storeRetry("peek", err, bo) {
			return false
		}
	}
}

// forget drops items' streams from the cache once their batch is done: the next batch reloads
// what it needs with Peek anyway, so the cache never holds more than one batch's streams and a
// worker's memory stays bounded by MaxBatch, however many streams it has seen.
func (w *worker) forget(items []*item) {
	for _, it := range items {
		if it.stampErr == nil {
			w.tr.Drop(it.key)
		}
	}
	w.streams.Store(int64(w.tr.Len()))
}

// commitShared commits b (ents' ops) to the shared store, retrying it while the store is
// unavailable, then acts on the store's verdicts and publishes the batch. It returns the
// deliveries to run again, as finish does.
func (w *worker) commitShared(ents []entry, b batch) []*item {
	r := w.r
	if w.broken {
		return nil
	}
	for i := range ents {
		e := &ents[i]
		if e.mark && e.op < 0 { // parked after MaxAttempts, accounted: record its mark
			e.op = b.add(opSpec{key: e.it.key, stamp: e.it.stamp, mark: true, park: true, hash: e.hash, verdict: dedup.Verdict{Kind: dedup.KindNew}})
		}
	}
	start := time.Now()
	between := func() bool {
		if !w.anyLive(ents) {
			return false // their channel is gone: they come back on the new one
		}
		if lim := r.cfg.StoreOutageRequeue; lim > 0 && time.Since(start) >= lim {
			w.requeue(ents, time.Since(start))
			return false
		}
		return true
	}
	if !w.retryCommit(r.hctx, b, b.commit(r.hctx), nil, between) {
		return nil // unacked: redelivered
	}
	now := time.Now()
	kept := ents[:0]
	for _, e := range ents {
		if e.op >= 0 && e.mark && b.err(e.op) == nil {
			switch v := b.verdict(e.op); v.Kind {
			case dedup.KindNew:
				w.tr.Commit(e.it.stamp, e.hash, now) // the cache's events are not reported: the store's are
			case dedup.KindDuplicate:
				e.unpark = false // another replica applied the re-driven copy first
				if e.kind == outHandled && !r.store.transactional() {
					r.cfg.Metrics.Add(MetricRaced, 1)
					r.cfg.Logger.Warn("consumer: handler ran for a stamp another replica committed first (plain handlers on a shared store are at-least-once when two replicas hold one message)", "stamp", e.it.stamp.String())
				} else if e.kind != outParked {
					e.kind = outDuplicate
				}
			default: // refused by the store's window: the effect did not run, nothing was marked
				if !w.park(&e, fmt.Sprintf("%s: refused by the shared store's dedup window (%s)", e.it.stamp, v), false) {
					continue // session ended or stopping: unacked
				}
			}
		}
		kept = append(kept, e)
	}
	w.tr.TakeDirty(w.keys[:0]) // the cache is never written back
	w.evs = append(w.evs, b.events()...)
	return w.finish(kept, b, start)
}

// requeue gives ents' deliveries back to the queue: the store has refused their batch for too
// long to hold them unacked any longer.
func (w *worker) requeue(ents []entry, outage time.Duration) {
	r := w.r
	done := make([]doneTag, 0, len(ents))
	for i := range ents {
		done = append(done, doneTag{gen: ents[i].it.gen, tag: ents[i].it.d.DeliveryTag, requeue: true})
	}
	r.done.Push(done...)
	r.cfg.Metrics.Add(MetricRequeued, float64(len(done)))
	r.cfg.Logger.Warn("consumer: store unavailable too long; deliveries given back to the queue", "deliveries", len(done), "outage", outage.Round(time.Second))
}

// anyLive reports whether any of ents' deliveries belongs to the current session.
func (w *worker) anyLive(ents []entry) bool {
	g := w.r.gen.Load()
	for i := range ents {
		if ents[i].it.gen == g {
			return true
		}
	}
	return false
}

// expireShared does the cache's expiry (its events are not reported) and, on worker 0 only, asks
// the store to expire the shared state, reporting the events of the replica whose transaction
// committed them.
func (w *worker) expireShared() {
	r := w.r
	now := time.Now()
	w.tr.Expire(now)
	w.tr.TakeDirty(w.keys[:0])
	w.streams.Store(int64(w.tr.Len()))
	if w.id != 0 {
		return
	}
	b := r.store.newBatch(r.hctx, 0)
	b.setExpire(now)
	if err := b.commit(r.hctx); err != nil {
		if errors.Is(err, ErrStoreUnavailable) && r.hctx.Err() == nil {
			r.cfg.Metrics.Add(MetricStoreRetries, 1)
			r.cfg.Logger.Warn("consumer: store unavailable; expiry retried at the next interval", "err", err)
			return
		}
		w.broken = true
		r.fail(wrapStore(err))
		return
	}
	w.evs = append(w.evs, b.events()...)
	w.report()
}

func compareKeys(a, b dedup.Key) int {
	if c := cmp.Compare(a.Source, b.Source); c != 0 {
		return c
	}
	return cmp.Compare(a.Stream, b.Stream)
}
