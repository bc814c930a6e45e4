package publisher

// Parking, and the missing-exchange spells that decide when a 404 or 403 parks at once.

import (
	"context"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/rabbitkit/rabbitkit/journal"
)

// park moves e to the journal's parked set and reports it, and reports whether it did. If parking
// fails the entry stays pending and is sent again: never lost.
func (s *sender) park(ctx context.Context, e *journal.Entry, pe *ParkedError) bool {
	pe.ID, pe.Stream, pe.Seq, pe.Exchange, pe.RoutingKey = e.ID, e.Stream, e.Seq, e.Exchange, e.RoutingKey
	if err := s.j.Park(ctx, e.ID, pe.reason()); err != nil {
		s.log.Error("publisher: parking failed; the message stays pending", "stream", e.Stream, "seq", e.Seq, "err", err)
		return false
	}
	s.m.Add(MetricParked, 1, exchangeLabel(e))
	s.p.c.parked.Add(1)
	s.p.rememberParked(pe)
	s.log.Error("publisher: message parked", "stream", e.Stream, "seq", e.Seq, "exchange", e.Exchange,
		"key", e.RoutingKey, "returned", pe.Returned, "reply_code", pe.ReplyCode, "reply_text", pe.ReplyText, "attempts", pe.Attempts)
	if cb := s.cfg.OnParked; cb != nil {
		s.p.cb.Push(func() { cb(pe) })
	}
	return true
}

// spellTracker remembers, per exchange (for a 403: per exchange and routing key, spellKey), since
// when publishes there have failed with 404 or 403: the input of Config.MissingExchangeGrace. A
// spell ends when a message to the exchange is confirmed or returned, or when no 404 or 403 came
// for spellGap (nothing was sent there, and the exchange may have existed meanwhile), so an old
// spell never parks a message without a grace. Owned by the sender goroutine.
type spellTracker struct {
	grace  time.Duration
	spells map[string]missingSpell
}

// missingSpell is one spell: its first and its latest refusal.
type missingSpell struct{ since, last time.Time }

// spellGap is longer than the default RetryBackoff's longest wait between two sends of a message
// (30 s).
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

// active reports whether any spell is running (so a confirm may end one).
func (t *spellTracker) active() bool { return len(t.spells) > 0 }

// end ends the spells that a message to e's exchange and key, confirmed or returned, proves over.
func (t *spellTracker) end(e *journal.Entry) {
	delete(t.spells, e.Exchange)
	delete(t.spells, e.Exchange+"\x00"+e.RoutingKey)
}

// hit records a 404 or 403 for key (spellKey) at now and returns how long its spell has lasted.
func (t *spellTracker) hit(key string, now time.Time) time.Duration {
	gap := max(t.grace, spellGap)
	if t.spells == nil {
		t.spells = make(map[string]missingSpell)
	}
	if len(t.spells) >= 1024 { // exchanges that never came back: forget the stale spells
		for x, sp := range t.spells {
			if now.Sub(sp.last) > gap {
				delete(t.spells, x)
			}
		}
	}
	sp, ok := t.spells[key]
	if !ok || now.Sub(sp.last) > gap {
		sp.since = now
	}
	sp.last = now
	t.spells[key] = sp
	return now.Sub(sp.since)
}
