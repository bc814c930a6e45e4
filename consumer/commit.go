package consumer

import (
	"context"
	"errors"
	"time"

	"github.com/rabbitkit/rabbitkit/consumer/dedup"
)

// pendingCommit is a plain-handler batch being committed while the worker handles the next one.
type pendingCommit struct {
	b     batch
	ents  []entry
	evs   []dedup.Event
	start time.Time
	done  chan error // buffered 1
}

// commitAsync commits a batch of a plain handler (mark-only ops, which cannot fail) while the
// worker goes on with the next batch: the worker updates its dedup window itself, so the store's
// goroutine never touches it. Results are published strictly in commit order (settle), and
// nothing is published after a failed commit.
func (w *worker) commitAsync(ents []entry, b batch) {
	now := time.Now()
	var evs []dedup.Event // published with the commit, after those of earlier ones (settle)
	for i := range ents {
		if e := &ents[i]; e.mark {
			evs = append(evs, w.commitMark(e, now)...)
		}
	}
	w.keys = w.tr.TakeDirty(w.keys[:0])
	states := w.states(w.keys)
	b.setStates(func([]bool) []StreamState { return states })
	w.settle()
	if w.broken {
		return
	}
	p := &pendingCommit{b: b, ents: ents, evs: evs, start: time.Now(), done: make(chan error, 1)}
	w.inflight = p
	w.commitCh <- p
}

// committer is the worker's second goroutine: it waits in Store.Commit for the batch commitAsync
// handed it while the worker handles the next one. The worker owns it: it starts it in loop and
// stops it by closing commitCh after settling the last commit.
func (w *worker) committer() {
	ctx := context.WithoutCancel(w.r.ctx)
	for p := range w.commitCh {
		p.done <- p.b.commit(ctx)
	}
}

// settle waits for the commit in flight, if any, and publishes its outcome.
func (w *worker) settle() {
	p := w.inflight
	if p == nil {
		return
	}
	w.inflight = nil
	// The window already holds the batch's marks, and later batches were classified against it:
	// the batch is committed again (the same states) until it commits, never given up.
	ctx := context.WithoutCancel(w.r.ctx)
	if !w.retryCommit(ctx, p.b, <-p.done, nil, nil) {
		w.broken = true
		return
	}
	w.evs = append(w.evs, p.evs...)
	w.finish(p.ents, p.b, p.start)
}

// finish publishes a committed batch: acks for what finished, metrics, events. It returns the
// deliveries whose ops failed (transactional handlers) to run again.
func (w *worker) finish(ents []entry, b batch, start time.Time) []*item {
	r := w.r
	now := time.Now()
	r.cfg.Metrics.Observe(MetricCommitSeconds, now.Sub(start).Seconds())
	var retry []*item
	done := make([]doneTag, 0, len(ents))
	for i := range ents {
		e := &ents[i]
		if e.op >= 0 {
			if err := b.err(e.op); err != nil {
				if !errors.Is(err, ErrSkipped) {
					w.handlerFailed(e.it, err)
				}
				retry = append(retry, e.it)
				continue
			}
		}
		if e.at.IsZero() {
			e.at = now
		}
		done = append(done, doneTag{gen: e.it.gen, tag: e.it.d.DeliveryTag, at: e.at})
		switch e.kind {
		case outHandled:
			r.cfg.Metrics.Add(MetricHandled, 1)
			if e.unpark { // counted once committed, not per attempt
				r.cfg.Metrics.Add(MetricRedriven, 1)
			}
		case outDuplicate:
			r.cfg.Metrics.Add(MetricDuplicates, 1)
		}
	}
	r.done.Push(done...)
	w.report()
	r.cfg.Metrics.Set(MetricStreams, float64(r.streamCount()))
	return retry
}
