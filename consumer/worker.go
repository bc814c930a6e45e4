package consumer

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cenkalti/backoff/v4"

	"github.com/rabbitkit/rabbitkit/consumer/dedup"
	"github.com/rabbitkit/rabbitkit/internal/fifo"
	"github.com/rabbitkit/rabbitkit/protocol"
)

// worker runs the handlers of the streams hashed to it, in delivery order, and owns their dedup
// state: its Tracker is touched only by this goroutine and, while it waits in Store.Commit, by the
// store's goroutine inside Batch.States.
type worker struct {
	r       *run
	id      int
	q       *fifo.Queue[*item]
	tr      *dedup.Tracker
	evs     []dedup.Event // events of the commit in progress
	keys    []dedup.Key
	streams atomic.Int64

	inflight *pendingCommit      // plain handlers: the batch being committed
	commitCh chan *pendingCommit // to the worker's committer goroutine (commit.go)
	commits  sync.WaitGroup      // the committer
	broken   bool                // a commit failed: publish nothing more
}

// entry is one delivery inside a batch.
type entry struct {
	it   *item
	op   int  // index in Batch.Ops, or -1
	mark bool // commit the stamp to the tracker when the op is applied
	// unpark: a re-driven copy of a parked stamp, being applied: on commit the stamp leaves the
	// tracker's parked set (it is committed already).
	unpark bool
	hash   uint64
	kind   outcome
	at     time.Time // when its handling ended
}

type outcome uint8

const (
	outHandled outcome = iota + 1
	outDuplicate
	outParked
	outPassed
)

func (w *worker) loop() {
	r := w.r
	t := time.NewTicker(r.cfg.ExpireInterval)
	defer t.Stop()
	defer func() { // the last worker out tells drain
		if r.workersLeft.Add(-1) == 0 {
			close(r.workersDone)
		}
	}()
	w.commitCh = make(chan *pendingCommit)
	w.commits.Go(w.committer)
	defer w.commits.Wait()
	defer close(w.commitCh)
	defer w.settle()
	for {
		select {
		case <-r.stopCh:
			return
		case <-t.C:
			w.expire()
		case <-w.q.Signal():
			for !r.stopping.Load() {
				items := w.q.Take(r.cfg.MaxBatch)
				if len(items) == 0 {
					break
				}
				w.process(items)
				// A steady flow never empties the queue: gaps must still be reported on time.
				select {
				case <-t.C:
					w.expire()
				default:
				}
			}
			w.settle() // idle: publish the last commit now
		}
	}
}

// process handles items in order, retrying transactional handlers that failed (with the later
// messages of their streams) until they succeed or are parked.
func (w *worker) process(items []*item) {
	for len(items) > 0 {
		retry := w.processOnce(items)
		if len(retry) == 0 {
			return
		}
		var d time.Duration
		for _, it := range retry {
			if it.attempt > 0 && it.nextDelay != backoff.Stop {
				d = max(d, it.nextDelay)
			}
		}
		if !w.sleep(d) {
			return // stopping: the rest stays unacked and is redelivered
		}
		items = retry
	}
}

// processOnce classifies and handles items, commits the batch and reports what finished. It returns
// the deliveries to run again: failed transactional handlers and the messages of their streams
// that followed them.
func (w *worker) processOnce(items []*item) []*item {
	r := w.r
	if r.store.shared() {
		defer w.forget(items)
		if !w.refresh(items) {
			return nil // stopping, or the run failed: the items stay unacked
		}
	}
	if !w.recordFirstStarts(items) {
		return nil // the run failed: the items stay unacked
	}
	b := r.store.newBatch(r.hctx, len(items))
	ents := make([]entry, 0, len(items))
	var local map[protocol.Stamp]uint64 // stamps handled earlier in this batch
	// rest: items left for the next round. A transactional handler's redelivered message whose
	// start is recorded (Config.MaxCrashes) gets a batch of its own, so that the count names the
	// message that crashed the process, not its batch.
	var rest []*item
	isolate := r.store.transactional()
	var admitted int64 // new streams taken in this batch (not in the window until it commits)
loop:
	for idx, it := range items {
		if r.stopping.Load() {
			break // the rest stays unacked and is redelivered after the drain
		}
		if it.gen != r.gen.Load() {
			// Its channel is gone: it will be redelivered on the new one. Later items of the
			// batch may already belong to the new channel.
			continue
		}
		e := entry{it: it, op: -1}
		ok := true
		switch {
		case errors.Is(it.stampErr, protocol.ErrNoStamp):
			if it.attempt == 0 && it.lastErr == nil {
				r.cfg.Metrics.Add(MetricUnstamped, 1)
			}
			if r.cfg.NoStamp == NoStampPark {
				ok = w.park(&e, "no rabbitkit stamp (NoStampPark policy)", false)
			} else {
				ok = w.handle(b, &e, false)
			}
		case it.stampErr != nil:
			ok = w.park(&e, it.stampErr.Error(), false)
		case r.cfg.Admit != nil && !w.admit(&e):
			ok = e.kind == outParked
		default:
			e.hash = dedup.BodyHash(it.d.Body)
			var v dedup.Verdict
			if _, seen := local[it.stamp]; it.redrive && !seen && w.tr.IsParked(it.stamp) {
				// An operator re-drove a message parked after its handler failed: apply it once,
				// as a new one (its stream is known: no stream bound applies).
				e.unpark, v = true, dedup.Verdict{Kind: dedup.KindNew}
				r.cfg.Logger.Info("consumer: applying a re-driven parked message", "stamp", it.stamp.String())
			} else {
				v = w.tr.Classify(it.stamp)
				if h, dup := local[it.stamp]; dup {
					v = dedup.Verdict{Kind: dedup.KindDuplicate, StoredHash: h}
				}
			}
			switch v.Kind {
			case dedup.KindNew:
				if v.Has(dedup.FlagNewStream) && !r.store.shared() && r.cfg.MaxStreams > 0 {
					if held := w.heldStreams() + admitted; held >= int64(r.cfg.MaxStreams) {
						r.cfg.Metrics.Add(MetricStreamsRefused, 1)
						ok = w.park(&e, fmt.Sprintf("new stream %s refused: the consumer holds %d streams (Config.MaxStreams %d); raise the bound if its source is legitimate, then re-drive", it.key, held, r.cfg.MaxStreams), false)
						break
					}
					admitted++
				}
				if local == nil {
					local = map[protocol.Stamp]uint64{}
				}
				local[it.stamp] = e.hash
				e.mark = true
				if w.needsStart(it) {
					if isolate && len(ents) > 0 {
						rest = items[idx:]
						break loop
					}
					n, recorded := w.recordStart(it)
					if !recorded {
						break loop // stopping or failed: this and later items stay unacked
					}
					if isolate {
						rest = items[idx+1:]
					}
					if n > int64(r.cfg.MaxCrashes) {
						ok = w.park(&e, fmt.Sprintf("its handler was started %d times on redeliveries without finishing: the consumer process died each time (a crash, os.Exit, the OOM killer; Config.MaxCrashes)", n-1), true)
						if isolate {
							if ok {
								ents = append(ents, e)
							}
							break loop
						}
						break // the switch: a plain handler's batch goes on
					}
					if n > 1 {
						r.cfg.Logger.Warn("consumer: redelivered again after its handler was started without finishing (did the process die in it?)", "stamp", it.stamp.String(), "starts", n, "max_crashes", r.cfg.MaxCrashes)
					}
				}
				ok = w.handle(b, &e, true)
				if isolate && rest != nil {
					if ok {
						ents = append(ents, e)
					}
					break loop
				}
			case dedup.KindDuplicate:
				if it.redrive {
					r.cfg.Logger.Info("consumer: re-driven copy dropped as a duplicate: its stamp was applied already, or was never parked after a handler failure", "stamp", it.stamp.String())
				}
				if v.StoredHash != 0 && v.StoredHash != e.hash {
					w.conflict(it.stamp, v.StoredHash, e.hash)
				}
				e.kind, e.at = outDuplicate, time.Now()
				// Ordered with its stream: acked only if what precedes it commits.
				e.op = b.add(opSpec{key: it.key, stamp: it.stamp, verdict: v})
			case dedup.KindSuspicious:
				ok = w.park(&e, fmt.Sprintf("suspicious rk-seq %d: more than MaxAhead above the stream's watermark (or an invalid stamp)", it.stamp.Seq), false)
			default: // dedup.KindStaleEpoch
				ok = w.park(&e, fmt.Sprintf("stale epoch %d: retired, a straggler cannot be told from a duplicate", it.stamp.Epoch), false)
			}
		}
		if !ok {
			if r.stopping.Load() {
				break // this and later items stay unacked
			}
			continue // its session ended: it comes back on the new channel
		}
		ents = append(ents, e)
	}
	if len(ents) == 0 {
		return rest
	}
	if r.store.shared() {
		return append(w.commitShared(ents, b), rest...)
	}
	if !r.store.transactional() {
		w.commitAsync(ents, b)
		return rest
	}
	w.settle()
	if w.broken {
		return nil
	}
	// touched and evs0 let a failed attempt be undone: States commits the marks to the window
	// inside the store's transaction, before the transaction's outcome is known.
	var touched []dedup.Key
	evs0 := len(w.evs)
	b.setStates(func(applied []bool) []StreamState {
		now := time.Now()
		for i := range ents {
			e := &ents[i]
			if e.mark && (e.op < 0 || applied[e.op]) {
				w.evs = append(w.evs, w.commitMark(e, now)...)
			}
		}
		w.keys = w.tr.TakeDirty(w.keys[:0])
		touched = append(touched[:0], w.keys...)
		return w.states(w.keys)
	})
	undo := func() bool {
		w.evs = w.evs[:evs0]
		ok := w.rollback(touched)
		touched = touched[:0]
		return ok
	}
	start := time.Now()
	// Not cancellable: the store's goroutine may be inside States, touching w.tr.
	ctx := context.WithoutCancel(r.ctx)
	if !w.retryCommit(ctx, b, b.commit(ctx), undo, func() bool { return w.anyLive(ents) }) {
		return nil // unacked: redelivered (the window holds what the store holds)
	}
	return append(w.finish(ents, b, start), rest...)
}

// commitMark records e's mark in the tracker (a parked message's stamp as parked, a re-driven
// copy's as no longer parked, any other as handled) and returns the events it caused.
func (w *worker) commitMark(e *entry, now time.Time) []dedup.Event {
	var evs []dedup.Event
	switch {
	case e.kind == outParked:
		_, evs = w.tr.CommitParked(e.it.stamp, e.hash, now)
	case e.unpark:
		w.tr.Unpark(e.it.stamp)
	default:
		_, evs = w.tr.Commit(e.it.stamp, e.hash, now)
	}
	return evs
}

// expire reports gaps past their grace and compacts idle streams, persisting what changed.
func (w *worker) expire() {
	w.settle()
	if w.broken {
		return
	}
	if w.r.store.shared() {
		w.expireShared()
		return
	}
	w.evs = append(w.evs, w.tr.Expire(time.Now())...)
	w.keys = w.tr.TakeDirty(w.keys[:0])
	if len(w.keys) > 0 {
		states := w.states(w.keys)
		b := w.r.store.newBatch(w.r.hctx, 0)
		b.setStates(func([]bool) []StreamState { return states })
		ctx := context.WithoutCancel(w.r.ctx)
		if !w.retryCommit(ctx, b, b.commit(ctx), nil, nil) {
			w.broken = true // the window is ahead of the store: nothing more may be acked
			return
		}
	}
	w.report()
}

func (w *worker) states(keys []dedup.Key) []StreamState {
	out := make([]StreamState, 0, len(keys))
	for _, k := range keys {
		buf, ok := w.tr.AppendState(nil, k)
		if !ok {
			buf = nil
		}
		out = append(out, StreamState{Key: k, State: buf})
	}
	w.streams.Store(int64(w.tr.Len()))
	return out
}

// sleep waits d unless the run is stopping.
func (w *worker) sleep(d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-w.r.stopCh:
		return false
	case <-t.C:
		return true
	}
}

func stampString(it *item) string {
	if it.stampErr != nil {
		return fmt.Sprintf("(no valid stamp; message-id %q)", it.d.MessageId)
	}
	return it.stamp.String()
}

func wrapStore(err error) error {
	if errors.Is(err, ErrStore) {
		return err
	}
	return fmt.Errorf("%w: %w", ErrStore, err)
}

// streamCount is the number of streams in all workers' dedup windows, as of their last commit.
func (r *run) streamCount() int64 {
	var n int64
	for _, w := range r.workers {
		n += w.streams.Load()
	}
	return n
}
