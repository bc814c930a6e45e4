package publisher

// The end of a session: unknown outcomes, and channel errors charged to their culprit.

import (
	"context"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/rabbitkit/rabbitkit/journal"
)

// endSession settles what the closed channel left: confirmed flights are settled, unconfirmed ones
// are unknown (they stay journaled and the next pass resends them). A channel-level error is charged
// to the message that caused it when it can be told: the only flight in the window.
func (s *sender) endSession(ctx context.Context, end sessionEnd) {
	var culprit *journal.Entry
	s.fault.culpritParked = false
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
	s.fault.rewindTo = 0
	if s.fault.retry != nil {
		s.fault.retry.Stop()
		s.fault.retry = nil
	}
	if channelErr {
		s.fault.failing = true
		// Resend one at a time up to what this channel sent, so the next channel error names its culprit.
		s.fault.probeUntil = max(s.fault.probeUntil, s.link.maxSent)
		if culprit != nil {
			s.charge(ctx, culprit, end.err)
		}
	}
	s.m.Set(MetricInFlight, 0)
	s.flushDeletes(true)
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
		spell := s.spells.hit(spellKey(ae.Code, e), time.Now())
		if g := s.cfg.MissingExchangeGrace; g >= 0 && spell >= g {
			park = true
		}
	}
	if park {
		if s.park(ctx, e, &ParkedError{ReplyCode: uint16(ae.Code), ReplyText: ae.Reason, Attempts: attempts}) {
			// Progress: the cause is gone. Reopen at once, and let a later error start the
			// backoff from its beginning.
			s.fault.culpritParked = true
			s.fault.backoff.Reset()
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
