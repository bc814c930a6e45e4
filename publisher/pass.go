package publisher

// A pass over the outbox: reading pending entries in ID order and publishing them, stamped.

import (
	"context"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/rabbitkit/rabbitkit/internal/amqpwire"
	"github.com/rabbitkit/rabbitkit/journal"
	"github.com/rabbitkit/rabbitkit/protocol"
)

// fill publishes entries while the window, the broker and the retry state allow.
func (s *sender) fill(ctx context.Context, ch pubChannel) (sessionEnd, bool) {
	for !s.link.blocked && !s.shutdown.draining && s.fault.retry == nil && s.fault.rewindTo == 0 {
		limit := s.cfg.MaxInFlight
		e, err := s.next(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return sessionEnd{stop: true}, true
			}
			s.log.Error("publisher: reading the journal failed; retrying", "err", err)
			s.pauseRetry()
			return sessionEnd{}, false
		}
		if e == nil {
			return sessionEnd{}, false
		}
		stamp := s.stamp(e)
		if err := checkWire(e, len(stamp), s.link.frameMax); err != nil {
			// Never sendable (journaled by an older version or through the journal API): sending
			// it would cost the connection on every attempt and hold everything behind it.
			if !s.park(ctx, e, &ParkedError{Invalid: true, ReplyText: err.Error()}) {
				s.pauseRetry() // it stays pending; try parking again after a backoff
				return sessionEnd{}, false
			}
			s.pass.idx++
			s.advance()
			continue
		}
		if s.fault.probeUntil != 0 {
			if e.ID <= s.fault.probeUntil {
				limit = 1
			} else if s.win.len() == 0 {
				s.fault.probeUntil = 0
			} else {
				limit = 1 // the last probe is still in flight
			}
		}
		if s.win.len() >= limit {
			return sessionEnd{}, false
		}
		msg := s.publishing(e, stamp)
		if !s.link.holding {
			// The pass's publishes leave in one write, when the pass ends (or before it reads
			// the journal). Only a pass that publishes takes the socket's write path.
			s.link.conn.Hold()
			s.link.holding = true
		}
		if err := ch.ch.Publish(ctx, e.Exchange, e.RoutingKey, e.Mandatory, msg); err != nil {
			if ctx.Err() != nil {
				return sessionEnd{stop: true}, true
			}
			return s.publishFailed(ch, err), true
		}
		s.pass.idx++
		now := time.Now()
		s.win.push(e, now)
		s.m.Add(MetricPublished, 1, exchangeLabel(e))
		if e.ID <= s.maxSent {
			s.m.Add(MetricResent, 1, exchangeLabel(e))
		} else {
			s.maxSent = e.ID
		}
		s.link.maxSent = max(s.link.maxSent, e.ID)
		s.m.Set(MetricInFlight, float64(s.win.len()))
	}
	return sessionEnd{}, false
}

// next returns the next unsent entry of the pass, reading a page when needed; nil when the journal
// holds nothing more (s.pass.changed is then armed).
func (s *sender) next(ctx context.Context) (*journal.Entry, error) {
	if s.pass.idx < len(s.pass.page) {
		return s.pass.page[s.pass.idx], nil
	}
	if s.pass.changed != nil {
		return nil, nil // waiting for a commit
	}
	s.releaseWrites()        // what this pass published leaves now, not after a journal read
	changed := s.j.Changed() // taken before reading: a commit after the read still wakes us
	// Committed before the read: if still pending, the read sees it. LastID covers IDs that
	// journal.Redrive assigned, which no Publish accepted.
	accepted := max(s.p.lastAccepted.Load(), s.j.LastID())
	page, err := s.j.Read(ctx, s.pass.cursor, s.cfg.ReadBatch)
	if err != nil {
		return nil, err
	}
	clear(s.pass.page)
	for len(page) > 0 {
		// Confirmed entries whose delete has not committed are settled: never sent again.
		last := page[len(page)-1].ID
		if page = s.del.skipPending(page); len(page) > 0 {
			break
		}
		s.pass.cursor = last
		if page, err = s.j.Read(ctx, s.pass.cursor, s.cfg.ReadBatch); err != nil {
			return nil, err
		}
	}
	s.pass.page, s.pass.idx = page, 0
	if len(page) == 0 {
		// Nothing pending after the cursor: every ID up to the last accepted one is settled.
		if accepted > s.pass.cursor {
			s.pass.cursor = accepted
			s.advance()
		}
		s.pass.changed = changed
		return nil, nil
	}
	s.pass.cursor = page[len(page)-1].ID
	return page[0], nil
}

// releaseWrites sends what the current pass published, if it held any writes back.
func (s *sender) releaseWrites() {
	if s.link.holding {
		s.link.holding = false
		s.link.conn.Release()
	}
}

// restartPass makes the next read start after ID after.
func (s *sender) restartPass(after uint64) {
	clear(s.pass.page)
	s.pass.page, s.pass.idx, s.pass.cursor, s.pass.changed = s.pass.page[:0], 0, after, nil
}

// stamp returns the v2 form of e's stamp (docs/PROTOCOL.md, section 1.1).
func (s *sender) stamp(e *journal.Entry) string {
	st := protocol.Stamp{Source: s.cfg.Source, Epoch: s.j.Epoch(), Stream: e.Stream, Seq: e.Seq}
	s.idBuf = st.AppendEncoded(s.idBuf[:0])
	return string(s.idBuf)
}

// publishing builds the AMQP message of an entry: the caller's properties and headers, and the
// stamp as message-id, or as the rk-stamp header when the caller set a message-id. Without caller
// headers the message has no headers table. The message is valid until the next call (its headers
// table is reused).
func (s *sender) publishing(e *journal.Entry, stamp string) amqp.Publishing {
	pr := &e.Properties
	msgID := pr.MessageID
	var h amqp.Table
	if len(e.Headers) > 0 || msgID != "" {
		if s.hdr == nil {
			s.hdr = make(amqp.Table, 8)
		}
		clear(s.hdr)
		for k, v := range e.Headers {
			s.hdr[k] = toValue(v)
		}
		h = s.hdr
	}
	if msgID == "" {
		msgID = stamp
	} else {
		h[protocol.HeaderStamp] = stamp
	}
	pub := amqpwire.Publishing(pr, h, e.Body)
	pub.MessageId = msgID
	return pub
}
