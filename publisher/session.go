package publisher

// One channel's session: the send loop, and how a session ends.

import (
	"context"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/rabbitkit/rabbitkit/internal/amqpseam"
	"github.com/rabbitkit/rabbitkit/internal/amqpwire"
)

// session runs one channel until it closes or the sender stops.
func (s *sender) session(ctx context.Context, c amqpseam.Conn, ch pubChannel) sessionEnd {
	s.win.reset()
	s.flushDeletes(true) // the pass re-reads the journal: confirmed entries must be skipped
	s.restartPass(0)
	s.link.maxSent = 0
	confirms, returns := ch.conf, ch.ret
	s.link.conn = c
	defer func() { s.link.conn = nil }()
	s.link.frameMax = amqpwire.DefaultFrameMax
	if fm := c.FrameMax(); fm > 0 {
		s.link.frameMax = fm
	}
	// Under an alarm RabbitMQ sends connection.blocked right after connection.open-ok; it has
	// arrived by now (opening the channel took round trips). Take it before the first write,
	// which would otherwise block in the socket instead of waiting here, visibly blocked.
	for pending := true; pending; {
		select {
		case b, ok := <-s.link.blocks:
			if ok {
				s.setBlocked(b.Active, b.Reason)
			} else {
				pending = false
			}
		default:
			pending = false
		}
	}
	for {
		end, done := s.fill(ctx, ch)
		s.releaseWrites()
		if done {
			return end
		}
		if s.shutdown.draining && s.win.len() == 0 {
			return sessionEnd{stop: true}
		}
		var retryC <-chan time.Time
		if s.fault.retry != nil {
			retryC = s.fault.retry.C
		}
		stopC := s.shutdown.signal
		if s.shutdown.draining {
			stopC = nil // closed: would spin
		}
		select {
		case cf, ok := <-confirms:
			if end, over := s.confirmed(ch, c, cf, ok); over {
				return end
			}
			// Take every confirm already buffered before doing anything else.
			for more := true; more; {
				select {
				case cf, ok := <-confirms:
					if end, over := s.confirmed(ch, c, cf, ok); over {
						return end
					}
				default:
					more = false
				}
			}
		case r, ok := <-returns:
			if ok {
				s.onReturn(r)
			} else {
				returns = nil
			}
		case e := <-ch.ch.Closed():
			return s.classify(e, c)
		case e := <-c.Closed():
			return sessionEnd{err: e, connLost: true}
		case b, ok := <-s.link.blocks:
			if ok {
				s.setBlocked(b.Active, b.Reason)
			}
		case <-s.pass.changed:
			s.pass.changed = nil
		case <-retryC:
			s.fault.retry = nil
		case <-stopC:
			s.shutdown.draining = true
		case <-ctx.Done():
			return sessionEnd{stop: true}
		case <-s.ticker.C:
			s.sample()
		}
		if err := s.resolve(ctx); err != nil {
			return sessionEnd{stop: true}
		}
	}
}

// publishFailed classifies a failed basic.publish write: the channel or connection is gone.
func (s *sender) publishFailed(ch pubChannel, err error) sessionEnd {
	t := time.NewTimer(time.Second)
	defer t.Stop()
	select {
	case e := <-ch.ch.Closed():
		if e != nil {
			return sessionEnd{err: e, connLost: !isChannelLevel(e)}
		}
	case <-t.C:
	}
	return sessionEnd{err: &amqp.Error{Code: amqp.ChannelError, Reason: err.Error()}, connLost: true}
}

// channelClosed is called when the confirm listener closed: the channel is gone; find out why.
func (s *sender) channelClosed(ch pubChannel, c amqpseam.Conn) sessionEnd {
	t := time.NewTimer(time.Second)
	defer t.Stop()
	select {
	case e := <-ch.ch.Closed():
		return s.classify(e, c)
	case e := <-c.Closed():
		return sessionEnd{err: e, connLost: true}
	case <-t.C:
		return sessionEnd{connLost: true}
	}
}

// confirmed applies one confirm taken from the listener (ok false: the listener closed with the
// channel). It reports whether the session is over, and why.
func (s *sender) confirmed(ch pubChannel, c amqpseam.Conn, cf amqp.Confirmation, ok bool) (sessionEnd, bool) {
	if !ok {
		return s.channelClosed(ch, c), true
	}
	if err := s.onConfirm(ch, cf); err != nil {
		s.log.Error("publisher: dropping the channel", "err", err)
		return sessionEnd{err: &amqp.Error{Code: amqp.InternalError, Reason: err.Error()}, connLost: true}, true
	}
	return sessionEnd{}, false
}
