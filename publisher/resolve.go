package publisher

import (
	"context"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/rabbitkit/rabbitkit/journal"
	"github.com/rabbitkit/rabbitkit/protocol"
)

const (
	deleteBatch   = 256             // confirmed IDs handed to the deleter at once
	deleteTimeout = 5 * time.Second // bound of one journal delete (also after a hard stop)
	// maxPendingDeletes: beyond this many confirmed IDs waiting for the deleter, the sender waits.
	maxPendingDeletes = 1 << 16
)

// onConfirm applies one confirm. Returns of the same message were dispatched by amqp091-go before
// the confirm, so every buffered return is taken first.
func (s *sender) onConfirm(ch channel, cf amqp.Confirmation) error {
	s.takeReturns(ch)
	return s.win.confirm(cf.DeliveryTag, false, cf.Ack)
}

func (s *sender) takeReturns(ch channel) {
	for {
		select {
		case r, ok := <-ch.returns():
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
	s.m.Add(MetricReturned, 1)
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
		s.flushDeletes(ctx, false)
	}
	if s.rewindTo != 0 && s.win.len() == 0 {
		// Every flight of the nacked window is settled: record the nacks, then resend from the
		// oldest nacked entry, one at a time up to what was sent, after a backoff.
		s.recordNacks(ctx)
		s.probeUntil = max(s.probeUntil, s.sessionMax)
		s.flushDeletes(ctx, true)
		s.restartPass(s.rewindTo - 1)
		s.rewindTo = 0
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
		if len(s.missing) > 0 {
			s.endSpells(f.e) // the exchange exists and takes this key
		}
		s.deletes = append(s.deletes, f.e.ID)
		s.m.Add(MetricConfirmed, 1)
		s.p.c.confirmed.Add(1)
		s.m.Observe(MetricConfirmLatency, time.Since(f.e.Created).Seconds())
		s.recovered = true
		if s.failing {
			s.failing = false
			s.retryBO.Reset()
		}
	case f.state == flightAcked: // returned as unroutable, then acked
		if len(s.missing) > 0 {
			s.endSpells(f.e) // the exchange exists and takes this key; only the route is missing
		}
		if !s.park(ctx, f.e, &ParkedError{Returned: true, ReplyCode: f.ret.ReplyCode, ReplyText: f.ret.ReplyText, Attempts: f.e.Attempts + 1}) {
			// Still pending: hold the receipts' frontier below it and send it again once the
			// window drains (it will be returned and parked again), as after a nack.
			if s.rewindTo == 0 || f.e.ID < s.rewindTo {
				s.rewindTo = f.e.ID
			}
		}
	default: // nacked: resend after the window drains
		s.m.Add(MetricNacked, 1)
		s.p.c.nacked.Add(1)
		s.nacked = append(s.nacked, f.e)
		if s.rewindTo == 0 || f.e.ID < s.rewindTo {
			s.rewindTo = f.e.ID
		}
	}
}

// recordNacks counts one attempt for every nacked entry and parks those at MaxAttempts.
func (s *sender) recordNacks(ctx context.Context) {
	if len(s.nacked) == 0 {
		return
	}
	s.failing = true
	var ids []uint64
	for _, e := range s.nacked {
		if int(e.Attempts)+1 >= s.cfg.MaxAttempts {
			s.park(ctx, e, &ParkedError{ReplyText: "basic.nack", Attempts: e.Attempts + 1})
		} else {
			ids = append(ids, e.ID)
		}
	}
	if err := s.j.RecordAttempt(ctx, ids, journal.OutcomeNacked, "basic.nack"); err != nil {
		s.log.Error("publisher: recording nacks in the journal failed", "err", err)
	}
	s.log.Warn("publisher: broker nacked messages; resending after a backoff", "count", len(s.nacked))
	clear(s.nacked)
	s.nacked = s.nacked[:0]
}

// endSession settles what the closed channel left: confirmed flights are settled, unconfirmed ones
// are unknown (they stay journaled and the next pass resends them). A channel-level error is charged
// to the message that caused it when it can be told: the only flight in the window.
func (s *sender) endSession(ctx context.Context, end sessionEnd) {
	var culprit *journal.Entry
	s.culpritParked = false
	channelErr := !end.connLost && !end.stop && end.err != nil
	if channelErr {
		s.m.Add(MetricChannelErrors, 1)
		culprit = s.win.only()
	}
	unknown := 0
	for s.win.len() > 0 {
		f := s.win.popAny()
		if f.state == flightWaiting {
			unknown++ // never confirmed: stays journaled, resent by the next pass
			continue
		}
		s.settle(ctx, f)
	}
	s.win.reset()
	if unknown > 0 {
		s.m.Add(MetricUnknown, float64(unknown))
	}
	s.recordNacks(ctx)
	s.rewindTo = 0
	if s.retry != nil {
		s.retry.Stop()
		s.retry = nil
	}
	if channelErr {
		s.failing = true
		// Resend one at a time up to what this channel sent, so the next channel error names its culprit.
		s.probeUntil = max(s.probeUntil, s.sessionMax)
		if culprit != nil {
			s.charge(ctx, culprit, end.err)
		}
	}
	s.m.Set(MetricInFlight, 0)
	s.flushDeletes(ctx, true)
	// Unknown flights were forgotten with the window: the next pass starts over from the first pending
	// entry, and the frontier must not move past them meanwhile.
	s.restartPass(0)
	s.advance()
}

// charge counts a channel error against e, parking it at MaxAttempts, at once for a 406, or at once
// when its exchange has been missing (404) or refusing this user (403) for longer than
// MissingExchangeGrace.
func (s *sender) charge(ctx context.Context, e *journal.Entry, ae *amqp.Error) {
	attempts := e.Attempts + 1
	park := int(attempts) >= s.cfg.MaxAttempts
	if ae.Code == amqp.PreconditionFailed {
		// basic.publish's 406s are about the message itself: a user-id other than the connection's
		// user, a message over max_message_size, a property RabbitMQ refuses. A retry cannot pass
		// until an operator changes something (then the parked entry is re-driven); retrying
		// would hold everything behind it for MaxAttempts backoffs.
		park = true
	}
	// basic.publish's 404: the exchange does not exist; its 403: this user may not write to it.
	// Both are about the exchange, not the message, and end when an operator fixes it.
	if ae.Code == amqp.NotFound || ae.Code == amqp.AccessRefused {
		spell := s.missingFor(spellKey(ae.Code, e), time.Now())
		if g := s.cfg.MissingExchangeGrace; g >= 0 && spell >= g {
			park = true
		}
	}
	if park {
		if s.park(ctx, e, &ParkedError{ReplyCode: uint16(ae.Code), ReplyText: ae.Reason, Attempts: attempts}) {
			// Progress: the cause is gone. Reopen at once, and let a later error start the
			// backoff from its beginning.
			s.culpritParked = true
			s.retryBO.Reset()
		}
		return
	}
	reason := ae.Error()
	if err := s.j.RecordAttempt(ctx, []uint64{e.ID}, journal.OutcomeChannelError, reason); err != nil {
		s.log.Error("publisher: recording a channel error in the journal failed", "err", err)
	}
	s.log.Warn("publisher: channel error attributed to a message", "stream", e.Stream, "seq", e.Seq,
		"exchange", e.Exchange, "key", e.RoutingKey, "attempts", attempts, "max_attempts", s.cfg.MaxAttempts, "err", ae)
}

// missingSpell is how long an exchange has been missing (or refusing): since the first 404 or 403
// of the current spell. A spell ends when a message to the exchange is confirmed or returned, or
// when no 404 or 403 came for
// spellGap (nothing was sent there, and the exchange may have existed meanwhile), so an old spell
// never parks a message without a grace. spellGap is longer than the default RetryBackoff's
// longest wait between two sends of a message (30 s).
type missingSpell struct{ since, last time.Time }

const spellGap = 5 * time.Minute

// spellKey names what a 404 or 403 is about. A 404 is about the exchange. A 403 is about the
// exchange and, under topic authorisation, the routing key: a message with an allowed key to the
// same exchange must not end the spell of a refused one.
func spellKey(code int, e *journal.Entry) string {
	if code == amqp.AccessRefused {
		return e.Exchange + "\x00" + e.RoutingKey
	}
	return e.Exchange
}

// endSpells ends the spells that a message to e's exchange and key, confirmed or returned, proves
// over.
func (s *sender) endSpells(e *journal.Entry) {
	delete(s.missing, e.Exchange)
	delete(s.missing, e.Exchange+"\x00"+e.RoutingKey)
}

// missingFor records a 404 or 403 for key (spellKey) at now and returns how long its spell has lasted.
func (s *sender) missingFor(key string, now time.Time) time.Duration {
	gap := max(s.cfg.MissingExchangeGrace, spellGap)
	if s.missing == nil {
		s.missing = make(map[string]missingSpell)
	}
	if len(s.missing) >= 1024 { // exchanges that never came back: forget the stale spells
		for x, sp := range s.missing {
			if now.Sub(sp.last) > gap {
				delete(s.missing, x)
			}
		}
	}
	sp, ok := s.missing[key]
	if !ok || now.Sub(sp.last) > gap {
		sp.since = now
	}
	sp.last = now
	s.missing[key] = sp
	return now.Sub(sp.since)
}

// park moves e to the journal's parked set and reports it, and reports whether it did. If parking
// fails the entry stays pending and is sent again: never lost.
func (s *sender) park(ctx context.Context, e *journal.Entry, pe *ParkedError) bool {
	pe.ID, pe.Stream, pe.Seq, pe.Exchange, pe.RoutingKey = e.ID, e.Stream, e.Seq, e.Exchange, e.RoutingKey
	if err := s.j.Park(ctx, e.ID, pe.reason()); err != nil {
		s.log.Error("publisher: parking failed; the message stays pending", "stream", e.Stream, "seq", e.Seq, "err", err)
		return false
	}
	s.m.Add(MetricParked, 1)
	s.p.c.parked.Add(1)
	s.p.rememberParked(pe)
	s.log.Error("publisher: message parked", "stream", e.Stream, "seq", e.Seq, "exchange", e.Exchange,
		"key", e.RoutingKey, "returned", pe.Returned, "reply_code", pe.ReplyCode, "reply_text", pe.ReplyText, "attempts", pe.Attempts)
	if s.cfg.OnParked != nil {
		s.cfg.OnParked(pe)
	}
	return true
}

// advance moves the receipts' frontier: every ID below the oldest unsettled one is settled.
func (s *sender) advance() {
	next := s.cursor + 1
	if s.pageIdx < len(s.page) {
		next = s.page[s.pageIdx].ID
	}
	if id := s.win.minID(); id != 0 && id < next {
		next = id
	}
	if s.rewindTo != 0 && s.rewindTo < next {
		next = s.rewindTo
	}
	s.p.advance(next - 1)
}

// flushDeletes hands the confirmed IDs to the deleter; with wait it also waits until every delete
// handed over so far is committed.
//
// Deletes are handed over even after a hard stop (the deleter bounds each one): a confirmed entry
// left in the journal would be sent again by the next Publisher.
func (s *sender) flushDeletes(ctx context.Context, wait bool) {
	if len(s.deletes) > 0 {
		req := delReq{ids: s.deletes}
		if wait || len(s.deletes) >= maxPendingDeletes {
			s.del.in <- req
		} else {
			select {
			case s.del.in <- req:
			default:
				return // the deleter is busy with an fsync: keep collecting, never stall the pipeline
			}
		}
		s.deletes = make([]uint64, 0, deleteBatch)
	}
	if !wait || ctx.Err() != nil {
		return
	}
	done := make(chan struct{})
	s.del.in <- delReq{done: done}
	select {
	case <-done:
	case <-ctx.Done():
	}
}

func (s *sender) setState(st State, err error) {
	if st == StateReady && s.blocked {
		st = StateBlocked
	}
	if st == s.state {
		return
	}
	from := s.state
	s.state = st
	s.p.setState(st, s.url)
	connected := 0.0
	if st == StateReady || st == StateBlocked {
		connected = 1
	}
	s.m.Set(MetricConnected, connected)
	s.log.Info("publisher: state", "from", from, "to", st, "url", redactURL(s.url), "err", err)
	if s.cfg.OnStateChange != nil {
		s.cfg.OnStateChange(StateChange{From: from, To: st, URL: redactURL(s.url), Err: err})
	}
}

func (s *sender) setBlocked(b bool) {
	if b == s.blocked {
		return
	}
	s.blocked = b
	s.p.blocked.Store(b)
	v := 0.0
	if b {
		v = 1
		s.log.Warn("publisher: broker blocked the connection (resource alarm); accepting into the journal only")
		s.setState(StateBlocked, nil)
	} else {
		s.log.Info("publisher: broker unblocked the connection")
		if s.state == StateBlocked {
			s.setState(StateReady, nil)
		}
	}
	s.m.Set(MetricBlocked, v)
}

// sample reports the journal gauges (once a second), from Backlog: Stats would copy every stream.
func (s *sender) sample() {
	js := s.j.Backlog()
	s.m.Set(MetricJournalPending, float64(js.Pending))
	s.m.Set(MetricJournalParked, float64(js.Parked))
	age := 0.0
	if !js.OldestPending.IsZero() {
		age = time.Since(js.OldestPending).Seconds()
	}
	s.m.Set(MetricOldestUnconfirmedAge, age)
}

// deleter commits confirmed deletes off the sender goroutine, so the pipeline never waits for fsync.
type deleter struct {
	j  Outbox
	in chan delReq
	p  *Publisher
}

type delReq struct {
	ids  []uint64
	done chan struct{}
}

func (d *deleter) run() {
	var ids []uint64
	var dones []chan struct{}
	for r := range d.in {
		// Merge everything already waiting into one journal commit.
		ids, dones = append(ids[:0], r.ids...), dones[:0]
		if r.done != nil {
			dones = append(dones, r.done)
		}
	more:
		for {
			select {
			case r, ok := <-d.in:
				if !ok {
					break more
				}
				ids = append(ids, r.ids...)
				if r.done != nil {
					dones = append(dones, r.done)
				}
			default:
				break more
			}
		}
		if len(ids) > 0 {
			ctx, cancel := context.WithTimeout(context.Background(), deleteTimeout)
			err := d.j.Delete(ctx, ids...)
			cancel()
			if err != nil {
				d.p.log.Error("publisher: deleting confirmed entries failed; they will be sent again", "count", len(ids), "err", err)
			}
		}
		for _, c := range dones {
			close(c)
		}
	}
}
