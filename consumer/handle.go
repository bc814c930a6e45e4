package consumer

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/cenkalti/backoff/v4"

	"github.com/rabbitkit/rabbitkit/consumer/dedup"
)

// A delivery's handling once the worker has classified it: running the handler (or queueing its
// transactional effect), retrying and giving up, and parking.

// handle runs the handler (plain) or queues its effect (transactional). It reports false when the
// delivery must be left unacked (stopping, or its session ended).
func (w *worker) handle(b batch, e *entry, stamped bool) bool {
	r, it := w.r, e.it
	if r.store.transactional() {
		if reason, ok := w.giveUp(it); ok {
			return w.park(e, reason, stamped)
		}
		e.kind = outHandled
		if !stamped {
			e.kind = outPassed
		}
		msg := newMessage(&it.d, it.stamp, stamped, it.attempt+1)
		msg.Redriven = e.unpark
		e.op = b.add(w.opOf(e, stamped, msg))
		return true
	}
	for {
		msg := newMessage(&it.d, it.stamp, stamped, it.attempt+1)
		msg.Redriven = e.unpark
		start := time.Now()
		err := callHandler(r.hctx, r.handler, msg)
		e.at = time.Now()
		r.cfg.Metrics.Observe(MetricHandlerSeconds, e.at.Sub(start).Seconds())
		if err == nil {
			e.kind = outHandled
			if !stamped {
				e.kind = outPassed
			}
			if stamped {
				e.op = b.add(w.opOf(e, true, nil))
			}
			return true
		}
		w.handlerFailed(it, err)
		if r.hctx.Err() != nil || it.gen != r.gen.Load() {
			return false
		}
		if reason, ok := w.giveUp(it); ok {
			return w.park(e, reason, stamped)
		}
		if !w.sleep(it.nextDelay) {
			return false
		}
	}
}

// opOf is the op of a delivery being handled: marked when stamped, running msg's transactional
// handler when msg is not nil.
func (w *worker) opOf(e *entry, stamped bool, msg *Message) opSpec {
	o := opSpec{key: e.it.key, msg: msg}
	if stamped {
		o.stamp, o.mark, o.hash, o.verdict = e.it.stamp, true, e.hash, dedup.Verdict{Kind: dedup.KindNew}
		o.redrive = e.unpark
	}
	return o
}

// handlerFailed records a failed attempt and the wait before the next one.
func (w *worker) handlerFailed(it *item, err error) {
	it.attempt++
	it.lastErr = err
	if it.retry == nil {
		it.retry = w.r.cfg.RetryBackoff()
	}
	it.nextDelay = it.retry.NextBackOff()
	w.r.cfg.Metrics.Add(MetricHandlerErrors, 1)
	w.r.cfg.Logger.Warn("consumer: handler failed", "stamp", stampString(it), "attempt", it.attempt, "max_attempts", w.r.cfg.MaxAttempts, "err", err)
}

// giveUp reports whether it, after a failed attempt, is to be parked now instead of retried,
// and why: MaxAttempts reached, the handler said ErrPoison, or RetryBackoff stopped.
func (w *worker) giveUp(it *item) (reason string, ok bool) {
	switch {
	case it.attempt == 0:
		return "", false
	case errors.Is(it.lastErr, ErrPoison):
		return fmt.Sprintf("handler says it can never succeed: %v", it.lastErr), true
	case it.attempt >= w.r.cfg.MaxAttempts:
		return fmt.Sprintf("handler failed %d times: %v", it.attempt, it.lastErr), true
	case it.nextDelay == backoff.Stop:
		return fmt.Sprintf("handler failed %d times and RetryBackoff stopped: %v", it.attempt, it.lastErr), true
	}
	return "", false
}

func callHandler(ctx context.Context, h Handler, m *Message) (err error) {
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("%w: %v", ErrPanic, p)
		}
	}()
	return h(ctx, m)
}

// park publishes the delivery to the parking queue (retrying until it is confirmed) and records it
// in e; accounted adds the stamp's mark so it is neither a gap nor handled again. It reports false
// when the delivery must be left unacked instead (drain deadline or session ended).
func (w *worker) park(e *entry, reason string, accounted bool) bool {
	r, it := w.r, e.it
	var bo backoff.BackOff
	for attempt := 1; ; attempt++ {
		err := r.parker.park(r.hctx, it, reason)
		if err == nil {
			break
		}
		if r.hctx.Err() != nil || it.gen != r.gen.Load() {
			return false
		}
		r.cfg.Logger.Warn("consumer: parking failed; retrying", "stamp", stampString(it), "attempt", attempt, "err", err)
		if bo == nil {
			bo = r.cfg.RetryBackoff()
		}
		d := bo.NextBackOff()
		if d == backoff.Stop {
			d = 5 * time.Second // parking is never given up: the message would be lost
		}
		if !sleepCtx(r.hctx, d) {
			return false
		}
	}
	e.kind, e.at, e.mark = outParked, time.Now(), accounted
	e.unpark = false // a re-driven copy parked again stays parked
	if accounted {
		e.op = -1
	}
	r.cfg.Metrics.Add(MetricParked, 1)
	r.cfg.Logger.Warn("consumer: message parked", "stamp", stampString(it), "queue", r.cfg.ParkingQueue, "reason", reason)
	if cb := r.cfg.OnParked; cb != nil {
		p := Parked{Stamp: it.stamp, Stamped: it.stampErr == nil, Reason: reason, Queue: r.cfg.ParkingQueue, Accounted: accounted}
		r.events.Push(func() { cb(p) })
	}
	return true
}
