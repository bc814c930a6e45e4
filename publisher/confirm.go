package publisher

// Confirms, returns and nacks: what the broker says about each flight.

import (
	"context"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/rabbitkit/rabbitkit/journal"
	"github.com/rabbitkit/rabbitkit/metrics"
	"github.com/rabbitkit/rabbitkit/protocol"
)

// onConfirm applies one confirm. Returns of the same message were dispatched by amqp091-go before
// the confirm, so every buffered return is taken first.
func (s *sender) onConfirm(ch pubChannel, cf amqp.Confirmation) error {
	s.takeReturns(ch)
	return s.win.confirm(cf.DeliveryTag, false, cf.Ack)
}

func (s *sender) takeReturns(ch pubChannel) {
	for {
		select {
		case r, ok := <-ch.ret:
			if !ok {
				return
			}
			s.onReturn(r)
		default:
			return
		}
	}
}

// onReturn matches a basic.return to its flight by the stamp (returns carry no delivery tag).
func (s *sender) onReturn(r amqp.Return) {
	s.m.Add(MetricReturned, 1, metrics.Label{Name: LabelExchange, Value: r.Exchange})
	s.p.c.returned.Add(1)
	st, _, err := protocol.Decode(r.MessageId, r.Headers)
	if err != nil || st.Source != s.cfg.Source || st.Epoch != s.j.Epoch() || !s.win.markReturned(st.Stream, st.Seq, &r) {
		s.log.Error("publisher: basic.return matches no message in flight", "exchange", r.Exchange,
			"key", r.RoutingKey, "message_id", r.MessageId, "reply_code", r.ReplyCode, "reply_text", r.ReplyText, "err", err)
	}
}

// resolve pops confirmed flights and acts on them, hands confirmed IDs to the deleter, and once the
// window drains after a nack, records the nacks and schedules the resend.
func (s *sender) resolve(ctx context.Context) error {
	for {
		f, ok := s.win.pop()
		if !ok {
			break
		}
		s.settle(ctx, f)
	}
	if len(s.deletes) >= deleteBatch || (s.win.len() == 0 && len(s.deletes) > 0) {
		s.flushDeletes(false)
	}
	if s.fault.rewindTo != 0 && s.win.len() == 0 {
		// Every flight of the nacked window is settled: record the nacks, then resend from the
		// oldest nacked entry, one at a time up to what was sent, after a backoff.
		s.recordNacks(ctx)
		s.fault.probeUntil = max(s.fault.probeUntil, s.link.maxSent)
		s.flushDeletes(true)
		s.restartPass(s.fault.rewindTo - 1)
		s.fault.rewindTo = 0
		s.pauseRetry()
	}
	s.m.Set(MetricInFlight, float64(s.win.len()))
	s.advance()
	return ctx.Err()
}

// settle acts on one confirmed flight.
func (s *sender) settle(ctx context.Context, f flight) {
	switch {
	case f.state == flightAcked && f.ret == nil:
		if s.spells.active() {
			s.spells.end(f.e) // the exchange exists and takes this key
		}
		s.deletes = append(s.deletes, f.e.ID)
		s.m.Add(MetricConfirmed, 1, exchangeLabel(f.e))
		s.p.c.confirmed.Add(1)
		s.m.Observe(MetricConfirmLatency, time.Since(f.e.Created).Seconds(), exchangeLabel(f.e))
		s.link.recovered = true
		if s.fault.failing {
			s.fault.failing = false
			s.fault.backoff.Reset()
		}
	case f.state == flightAcked: // returned as unroutable, then acked
		if s.spells.active() {
			s.spells.end(f.e) // the exchange exists and takes this key; only the route is missing
		}
		if !s.park(ctx, f.e, &ParkedError{Returned: true, ReplyCode: f.ret.ReplyCode, ReplyText: f.ret.ReplyText, Attempts: f.e.Attempts + 1}) {
			// Still pending: hold the receipts' frontier below it and send it again once the
			// window drains (it will be returned and parked again), as after a nack.
			if s.fault.rewindTo == 0 || f.e.ID < s.fault.rewindTo {
				s.fault.rewindTo = f.e.ID
			}
		}
	default: // nacked: resend after the window drains
		s.m.Add(MetricNacked, 1, exchangeLabel(f.e))
		s.p.c.nacked.Add(1)
		s.fault.nacked = append(s.fault.nacked, f.e)
		if s.fault.rewindTo == 0 || f.e.ID < s.fault.rewindTo {
			s.fault.rewindTo = f.e.ID
		}
	}
}

// recordNacks counts one attempt for every nacked entry and parks those at MaxAttempts.
func (s *sender) recordNacks(ctx context.Context) {
	if len(s.fault.nacked) == 0 {
		return
	}
	s.fault.failing = true
	var ids []uint64
	for _, e := range s.fault.nacked {
		if int(e.Attempts)+1 >= s.cfg.MaxAttempts {
			s.park(ctx, e, &ParkedError{ReplyText: "basic.nack", Attempts: e.Attempts + 1})
		} else {
			ids = append(ids, e.ID)
		}
	}
	if err := s.j.RecordAttempt(ctx, ids, journal.OutcomeNacked, "basic.nack"); err != nil {
		s.log.Error("publisher: recording nacks in the journal failed", "err", err)
	}
	s.log.Warn("publisher: broker nacked messages; resending after a backoff", "count", len(s.fault.nacked))
	clear(s.fault.nacked)
	s.fault.nacked = s.fault.nacked[:0]
}
