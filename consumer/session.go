package consumer

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/cenkalti/backoff/v4"
	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/rabbitkit/rabbitkit/consumer/dedup"
	"github.com/rabbitkit/rabbitkit/internal/amqpconn"
	"github.com/rabbitkit/rabbitkit/internal/amqpseam"
	"github.com/rabbitkit/rabbitkit/protocol"
)

// item is one delivery on its way through a worker.
type item struct {
	d         amqp.Delivery
	gen       uint64
	stamp     protocol.Stamp
	stampErr  error // nil, protocol.ErrNoStamp or an error wrapping protocol.ErrMalformed
	key       dedup.Key
	attempt   int             // handler attempts so far
	lastErr   error           // last handler error (transactional handlers are retried across batches)
	retry     backoff.BackOff // its handler retry schedule, made on the first failure
	redrive   bool            // carries protocol.HeaderRedrive: an operator re-drove it from the parking queue
	started   bool            // its handler start was recorded (Config.MaxCrashes)
	nextDelay time.Duration   // retry's wait before the next attempt (backoff.Stop: park it)
}

// doneTag is a finished delivery, reported by a worker once its outcome is committed.
type doneTag struct {
	gen, tag uint64
	at       time.Time // when its handling ended
	requeue  bool      // give it back to the queue (basic.nack, requeue) instead of acking it
}

// session is one connection's consuming channel. Only the Run goroutine touches it.
type session struct {
	conn      amqpseam.Conn
	ch        amqpseam.Channel
	gen       uint64
	tag       string
	dels      <-chan amqp.Delivery
	chClose   <-chan *amqp.Error
	connClose <-chan *amqp.Error
	cancelled <-chan string
	acks      *ackWindow
}

// connLoop connects, consumes and reconnects until r.ctx ends; then it drains. It runs on the Run
// goroutine, which owns every connection and channel of the session.
func (r *run) connLoop() {
	log := r.cfg.Logger
	for {
		r.setState(StateConnecting, "", nil)
		conn, url, err := r.dialer.Dial(r.ctx)
		if err != nil {
			if r.ctx.Err() == nil {
				// Config.ReconnectBackoff gave up: the caller must see it, not a clean stop.
				r.fail(fmt.Errorf("%w: %w", ErrGaveUp, err))
			}
			return
		}
		s, err := r.open(conn)
		if err != nil {
			_ = conn.Close(time.Now().Add(time.Second))
			r.status.Fail(err)
			log.Warn("consumer: cannot consume", "url", amqpconn.Redact(url), "queue", r.cfg.Queue, "err", err)
			if !sleepCtx(r.ctx, time.Second) {
				return
			}
			continue
		}
		log.Info("consumer: consuming", "url", amqpconn.Redact(url), "queue", r.cfg.Queue, "prefetch", r.cfg.Prefetch)
		r.setState(StateConsuming, url, nil)
		drained, lost := r.serve(s)
		if !drained {
			r.setState(StateConnecting, url, lost)
		}
		// Bounded: a dead or black-holed peer never answers close-ok.
		_ = conn.Close(time.Now().Add(time.Second))
		r.gen.Add(1) // deliveries of this session still queued in workers are dropped: they come back
		if drained {
			return
		}
		r.cfg.Metrics.Add(MetricReconnects, 1)
		if !sleepCtx(r.ctx, 100*time.Millisecond) {
			return
		}
	}
}

func (r *run) open(conn amqpseam.Conn) (*session, error) {
	ch, err := conn.Channel()
	if err != nil {
		return nil, fmt.Errorf("consumer: open channel: %w", err)
	}
	if err := ch.Declare(r.cfg.parkingTopology()); err != nil {
		return nil, err
	}
	if err := ch.Qos(r.cfg.Prefetch); err != nil {
		return nil, fmt.Errorf("consumer: qos: %w", err)
	}
	s := &session{
		conn: conn, ch: ch, acks: newAckWindow(),
		chClose: ch.Closed(), connClose: conn.Closed(), cancelled: ch.NotifyCancel(1),
	}
	s.gen = r.gen.Add(1)
	s.tag = fmt.Sprintf("%s-%d", r.cfg.ConnectionName, s.gen)
	// An exclusive store's dedup window lives in this process: a second consumer process on the
	// queue (with a store of its own) would apply messages again. Keep it out where the broker
	// lets us (docs/DESIGN.md, "One consumer per queue").
	exclusive := !r.store.shared()
	if exclusive {
		q, err := ch.Inspect(r.cfg.Queue)
		if err != nil {
			return nil, fmt.Errorf("consumer: inspect queue %q: %w", r.cfg.Queue, err)
		}
		if q.Consumers > 0 {
			return nil, fmt.Errorf("%w: queue %q has %d consumer(s) already", ErrQueueInUse, r.cfg.Queue, q.Consumers)
		}
	}
	// drain cancels the consumer (amqpseam: not from a goroutine of its own).
	s.dels, err = ch.Consume(r.cfg.Queue, s.tag, exclusive)
	if err != nil {
		var ae *amqp.Error
		if exclusive && errors.As(err, &ae) && ae.Code == amqp.AccessRefused {
			return nil, fmt.Errorf("%w: queue %q: %w", ErrQueueInUse, r.cfg.Queue, err)
		}
		return nil, fmt.Errorf("consumer: consume %q: %w", r.cfg.Queue, err)
	}
	return s, nil
}

// serve dispatches deliveries and sends acks until the session fails (false, and why) or r.ctx
// ends and the drain is complete (true).
func (r *run) serve(s *session) (bool, error) {
	log := r.cfg.Logger
	r.checkParking(s)
	parkingTick := time.NewTicker(parkingCheckInterval)
	defer parkingTick.Stop()
	for {
		select {
		case <-parkingTick.C:
			r.checkParking(s)
		case d, ok := <-s.dels:
			if !ok {
				reason := sessionEndReason(s)
				log.Warn("consumer: delivery channel closed; reconnecting", "queue", r.cfg.Queue, "reason", reason)
				return false, fmt.Errorf("consumer: delivery channel closed: %v", reason)
			}
			s.acks.receive(d.DeliveryTag)
			r.dispatch(s.gen, d)
		case <-r.done.Signal():
			if err := r.flushAcks(s); err != nil {
				log.Warn("consumer: ack failed; reconnecting", "err", err)
				return false, fmt.Errorf("consumer: ack: %w", err)
			}
		case e := <-s.chClose:
			log.Warn("consumer: channel closed; reconnecting", "err", e)
			return false, amqpErr("channel closed", e)
		case e := <-s.connClose:
			log.Warn("consumer: connection closed; reconnecting", "err", e)
			return false, amqpErr("connection closed", e)
		case tag := <-s.cancelled:
			// The broker cancelled the consumer: the queue was deleted, or its node went away.
			// A new session re-declares the topology and consumes again.
			log.Warn("consumer: consumer cancelled by the broker; re-declaring and resuming", "queue", r.cfg.Queue, "consumer_tag", tag)
			return false, fmt.Errorf("consumer: consumer %s cancelled by the broker (queue deleted, or its node went away)", tag)
		case <-r.ctx.Done():
			r.drain(s)
			return true, nil
		}
	}
}

// parkingCheckInterval is how often a session reads the parking queue's depth.
const parkingCheckInterval = 30 * time.Second

// checkParking sets MetricParkingQueueMessages to the parking queue's depth, read with a passive
// declare on a channel of its own (a 404 closes that channel, not the consuming one). It counts
// what this consumer parked and what the broker dead-lettered there (a quorum queue's delivery
// limit), and what nobody has re-driven yet, whoever parked it.
func (r *run) checkParking(s *session) {
	ch, err := s.conn.Channel()
	if err != nil {
		return // the session is ending: serve hears of it
	}
	defer ch.Close()
	q, err := ch.Inspect(r.cfg.ParkingQueue)
	if err != nil {
		r.cfg.Logger.Warn("consumer: cannot read the parking queue's depth", "queue", r.cfg.ParkingQueue, "err", err)
		return
	}
	r.cfg.Metrics.Set(MetricParkingQueueMessages, float64(q.Messages))
}

// amqpErr makes an error of a NotifyClose value (nil when the peer closed cleanly).
func amqpErr(what string, e *amqp.Error) error {
	if e == nil {
		return fmt.Errorf("consumer: %s", what)
	}
	return fmt.Errorf("consumer: %s: %w", what, e)
}

func sessionEndReason(s *session) any {
	select {
	case e := <-s.chClose:
		return e
	case tag := <-s.cancelled:
		return "consumer " + tag + " cancelled by the broker"
	default:
		return "unknown"
	}
}

// drain stops consuming, waits for the workers and acks what they finished.
func (r *run) drain(s *session) {
	log := r.cfg.Logger
	if err := s.ch.Cancel(s.tag); err != nil {
		log.Warn("consumer: basic.cancel failed", "err", err)
	}
	r.stopWorkers()
	alive := true
	for {
		select {
		case <-r.done.Signal():
			if alive && r.flushAcks(s) != nil {
				alive = false
			}
		case <-s.chClose:
			alive = false
			s.chClose = nil // closed by amqp091-go: a nil channel stops the select from spinning
		case <-s.connClose:
			alive = false
			s.connClose = nil
		case <-r.workersDone:
			if alive {
				if err := r.flushAcks(s); err != nil {
					log.Warn("consumer: final ack failed", "err", err)
				}
			}
			log.Info("consumer: drained", "queue", r.cfg.Queue, "unacked_left", s.acks.outstanding())
			return
		}
	}
}

// flushAcks acks the finished prefix of this session's deliveries with one multiple ack.
func (r *run) flushAcks(s *session) error {
	now := time.Now()
	for _, d := range r.done.Take(0) {
		if d.gen != s.gen {
			continue // an older channel's delivery: it will be redelivered and dropped as a duplicate
		}
		if d.requeue {
			if err := s.ch.Nack(d.tag, false, true); err != nil {
				return fmt.Errorf("consumer: nack %d: %w", d.tag, err)
			}
			s.acks.finish(d.tag) // settled: a later multiple ack skips it
			continue
		}
		s.acks.finish(d.tag)
		r.cfg.Metrics.Observe(MetricAckSeconds, now.Sub(d.at).Seconds())
	}
	tag, ok := s.acks.advance()
	if !ok {
		return nil
	}
	if err := s.ch.Ack(tag, true); err != nil {
		return fmt.Errorf("consumer: ack %d: %w", tag, err)
	}
	return nil
}

// dispatch decodes the stamp and queues the delivery to the worker owning its stream.
func (r *run) dispatch(gen uint64, d amqp.Delivery) {
	d.Acknowledger = nil // acks go through the session only
	it := &item{d: d, gen: gen}
	if d.Redelivered {
		r.cfg.Metrics.Add(MetricRedeliveries, 1)
	}
	var version protocol.Version
	it.stamp, version, it.stampErr = protocol.Decode(d.MessageId, d.Headers)
	if version == protocol.V1 {
		r.cfg.Metrics.Add(MetricLegacyStamps, 1)
	}
	if it.stampErr == nil {
		it.key = dedup.KeyOf(it.stamp)
		_, it.redrive = d.Headers[protocol.HeaderRedrive]
	} else {
		// No stream to keep in order: spread by routing key.
		it.key = dedup.Key{Stream: d.Exchange + "/" + d.RoutingKey}
	}
	r.workers[r.workerOf(it.key)].q.Push(it)
}

func sleepCtx(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}
