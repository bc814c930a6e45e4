package publisher

import (
	"context"
	"log/slog"
	"time"

	"github.com/cenkalti/backoff/v4"
	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/rabbitkit/rabbitkit/internal/amqpwire"
	"github.com/rabbitkit/rabbitkit/journal"
	"github.com/rabbitkit/rabbitkit/metrics"
	"github.com/rabbitkit/rabbitkit/protocol"
)

// sender is the one goroutine that owns the AMQP connection and channel. It reads the journal in ID
// order, publishes with confirms, and resolves entries (delete, record, park).
type sender struct {
	p   *Publisher
	cfg Config
	j   Outbox
	log *slog.Logger
	m   metrics.Recorder
	win *window
	del *deleter

	stop     <-chan struct{} // closed when Close begins: send nothing new, wait for in-flight confirms
	stopping bool

	// Read position within the current pass over the journal. A pass starts at ID 0 on every channel.
	page    []*journal.Entry
	pageIdx int
	cursor  uint64 // highest ID read in this pass
	maxSent uint64 // highest ID ever sent (sends at or below it are resends)
	changed <-chan struct{}

	// Nacks and channel errors.
	rewindTo   uint64           // after a nack: once the window drains, resend from this ID
	nacked     []*journal.Entry // nacked entries, recorded once the window drains
	probeUntil uint64           // send one message at a time while the next ID <= probeUntil
	retryBO    backoff.BackOff
	retry      *time.Timer // resend paused until it fires (nil: not paused)
	failing    bool        // retryBO has advanced since the last positive confirm
	sessionMax uint64      // highest ID sent on the current channel

	// missing: exchanges whose publishes failed with 404 (and exchange+key pairs with 403), since
	// when (spellKey; see Config.MissingExchangeGrace).
	missing map[string]missingSpell
	// culpritParked: the last channel error's culprit was parked, so the cause is gone and the
	// channel reopens without a backoff.
	culpritParked bool

	// sess is the connection of the running session; holding: its writes are held back since the
	// pass's first publish.
	sess     conn
	holding  bool
	frameMax int // the session's negotiated frame size (checkWire)

	// hdr is the headers table of every publish, reused: amqp091-go encodes it before Publish returns.
	hdr   amqp.Table
	idBuf []byte // the stamp's encoding, reused

	blocked   bool
	state     State
	url       string
	dials     int
	deletes   []uint64
	ticker    *time.Ticker
	recovered bool // a positive confirm arrived on the current connection
}

// healthySession: a channel that lived this long counts as progress even without a confirm (an idle
// publisher), so the next reconnect does not wait for the reconnect backoff.
const healthySession = 5 * time.Second

// sessionEnd says why a channel stopped.
type sessionEnd struct {
	err      *amqp.Error // close reason (nil: unknown or clean)
	connLost bool        // the connection is gone (else only the channel)
	stop     bool        // Close asked us to stop, or the hard context ended
}

// run is the sender goroutine. ctx is the hard stop (Close's context ended); dialCtx ends when Close
// begins, abandoning a dial or a backoff in progress.
func (s *sender) run(ctx, dialCtx context.Context) {
	s.ticker = time.NewTicker(time.Second)
	defer s.ticker.Stop()
	defer s.setState(StateClosed, nil)
	defer s.flushDeletes(ctx, true)
	connBO := s.cfg.ReconnectBackoff()
	s.retryBO = s.cfg.RetryBackoff()
	var c conn
	for {
		if s.stopped(ctx) {
			if c != nil {
				s.dropConn(c)
			}
			return
		}
		if c == nil {
			if s.dials > 0 && !s.recovered {
				// The last connection died without a single confirm: don't hot-loop on a broker
				// that accepts connections and then drops them.
				if !s.sleep(ctx, connBO.NextBackOff(), nil) {
					continue
				}
			}
			s.setState(StateConnecting, nil)
			nc, url, err := s.cfg.dial.connect(dialCtx)
			if err != nil {
				if !s.stopped(ctx) {
					// Only a ReconnectBackoff that gives up gets here: keep trying, slowly.
					s.log.Error("publisher: dial failed", "err", err)
					s.sleep(ctx, connBO.NextBackOff(), nil)
				}
				continue
			}
			if s.dials > 0 {
				s.m.Add(MetricReconnects, 1)
			}
			s.dials++
			s.recovered = false
			c, s.url = nc, url
			s.p.setConn(c)
			s.setBlocked(false)
		}
		ch, err := c.channel(dialCtx, s.cfg.MaxInFlight)
		if err != nil {
			ae := amqpErr(err)
			if isChannelLevel(ae) && !c.isClosed() {
				// Typically a topology conflict (406) or missing permissions (403): it needs an
				// operator; keep accepting into the journal and retry with backoff.
				s.log.Error("publisher: channel set-up failed; retrying", "err", err)
				s.m.Add(MetricChannelErrors, 1)
				s.failing = true
				if !s.sleep(ctx, s.retryBO.NextBackOff(), c) && c.isClosed() {
					s.dropConn(c)
					c = nil
				}
				continue
			}
			if !s.stopped(ctx) {
				s.log.Warn("publisher: connection lost while opening the channel", "err", err)
			}
			s.dropConn(c)
			c = nil
			continue
		}
		if s.recovered {
			connBO.Reset()
		}
		s.setState(StateReady, nil)
		began := time.Now()
		end := s.session(ctx, c, ch)
		if time.Since(began) >= healthySession {
			s.recovered = true // an idle but stable connection counts as progress
		}
		s.endSession(ctx, end)
		if end.stop {
			ch.close()
			s.dropConn(c)
			return
		}
		if end.connLost || c.isClosed() {
			s.setState(StateConnecting, end.err)
			s.log.Warn("publisher: connection lost; reconnecting", "url", redactURL(s.url), "err", end.err)
			s.dropConn(c)
			c = nil
			if s.recovered {
				connBO.Reset()
			}
			continue
		}
		// Channel-level error with a healthy connection: reopen just the channel, after a backoff.
		s.setState(StateConnecting, end.err)
		s.log.Warn("publisher: channel closed by the broker; reopening", "err", end.err)
		ch.close()
		var wait time.Duration // none when the message that broke the channel is parked (progress)
		if !s.culpritParked {
			wait = s.retryBO.NextBackOff()
		}
		if !s.sleep(ctx, wait, c) && c.isClosed() {
			s.dropConn(c)
			c = nil
		}
	}
}

// dropConn closes c (bounded) and forgets it.
func (s *sender) dropConn(c conn) {
	s.p.setConn(nil)
	c.close(time.Now().Add(time.Second))
}

// stopped reports whether the sender must exit now (window empty or hard stop).
func (s *sender) stopped(ctx context.Context) bool {
	if ctx.Err() != nil {
		return true
	}
	select {
	case <-s.stop:
		s.stopping = true
	default:
	}
	return s.stopping && s.win.len() == 0
}

// sleep waits d (or until stop / hard stop / loss of c). It keeps draining c's notifications. It
// reports whether the full wait elapsed.
func (s *sender) sleep(ctx context.Context, d time.Duration, c conn) bool {
	if d == backoff.Stop {
		d = 30 * time.Second
	}
	t := time.NewTimer(d)
	defer t.Stop()
	var blocked <-chan amqp.Blocking
	var closed <-chan *amqp.Error
	if c != nil {
		blocked, closed = c.blocked(), c.closed()
	}
	for {
		select {
		case <-t.C:
			return true
		case <-s.stop:
			s.stopping = true
			return false
		case <-ctx.Done():
			return false
		case b, ok := <-blocked:
			if !ok {
				blocked = nil
				continue
			}
			s.setBlocked(b.Active)
		case <-closed:
			return false
		case <-s.ticker.C:
			s.sample()
		}
	}
}

// session runs one channel until it closes or the sender stops.
func (s *sender) session(ctx context.Context, c conn, ch channel) sessionEnd {
	s.win.reset()
	s.flushDeletes(ctx, true) // the pass re-reads the journal: confirmed entries must be gone first
	s.restartPass(0)
	s.sessionMax = 0
	confirms, returns := ch.confirms(), ch.returns()
	s.sess = c
	defer func() { s.sess = nil }()
	s.frameMax = amqpwire.DefaultFrameMax
	if fm, ok := c.(interface{ frameMax() int }); ok && fm.frameMax() > 0 {
		s.frameMax = fm.frameMax()
	}
	// Under an alarm RabbitMQ sends connection.blocked right after connection.open-ok; it has
	// arrived by now (opening the channel took round trips). Take it before the first write,
	// which would otherwise block in the socket instead of waiting here, visibly blocked.
	for pending := true; pending; {
		select {
		case b, ok := <-c.blocked():
			if ok {
				s.setBlocked(b.Active)
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
		if s.stopping && s.win.len() == 0 {
			return sessionEnd{stop: true}
		}
		var retryC <-chan time.Time
		if s.retry != nil {
			retryC = s.retry.C
		}
		stopC := s.stop
		if s.stopping {
			stopC = nil // closed: would spin
		}
		select {
		case cf, ok := <-confirms:
			if !ok {
				return s.channelClosed(ch, c)
			}
			if err := s.onConfirm(ch, cf); err != nil {
				s.log.Error("publisher: dropping the channel", "err", err)
				return sessionEnd{err: &amqp.Error{Code: amqp.InternalError, Reason: err.Error()}, connLost: true}
			}
			// Take every confirm already buffered before doing anything else.
			for more := true; more; {
				select {
				case cf, ok := <-confirms:
					if !ok {
						return s.channelClosed(ch, c)
					}
					if err := s.onConfirm(ch, cf); err != nil {
						s.log.Error("publisher: dropping the channel", "err", err)
						return sessionEnd{err: &amqp.Error{Code: amqp.InternalError, Reason: err.Error()}, connLost: true}
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
		case e := <-ch.closed():
			return s.classify(e, c)
		case e := <-c.closed():
			return sessionEnd{err: e, connLost: true}
		case b, ok := <-c.blocked():
			if ok {
				s.setBlocked(b.Active)
			}
		case <-s.changed:
			s.changed = nil
		case <-retryC:
			s.retry = nil
		case <-stopC:
			s.stopping = true
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

// fill publishes entries while the window, the broker and the retry state allow.
func (s *sender) fill(ctx context.Context, ch channel) (sessionEnd, bool) {
	for !s.blocked && !s.stopping && s.retry == nil && s.rewindTo == 0 {
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
		if err := checkWire(e, len(stamp), s.frameMax); err != nil {
			// Never sendable (journaled by an older version or through the journal API): sending
			// it would cost the connection on every attempt and hold everything behind it.
			if !s.park(ctx, e, &ParkedError{Invalid: true, ReplyText: err.Error()}) {
				s.pauseRetry() // it stays pending; try parking again after a backoff
				return sessionEnd{}, false
			}
			s.pageIdx++
			s.advance()
			continue
		}
		if s.probeUntil != 0 {
			if e.ID <= s.probeUntil {
				limit = 1
			} else if s.win.len() == 0 {
				s.probeUntil = 0
			} else {
				limit = 1 // the last probe is still in flight
			}
		}
		if s.win.len() >= limit {
			return sessionEnd{}, false
		}
		msg := s.publishing(e, stamp)
		if !s.holding {
			// The pass's publishes leave in one write, when the pass ends (or before it reads
			// the journal). Only a pass that publishes takes the socket's write path.
			s.sess.hold()
			s.holding = true
		}
		if err := ch.publish(ctx, e.Exchange, e.RoutingKey, e.Mandatory, msg); err != nil {
			if ctx.Err() != nil {
				return sessionEnd{stop: true}, true
			}
			return s.publishFailed(ch, err), true
		}
		s.pageIdx++
		now := time.Now()
		s.win.push(e, now)
		s.m.Add(MetricPublished, 1)
		if e.ID <= s.maxSent {
			s.m.Add(MetricResent, 1)
		} else {
			s.maxSent = e.ID
		}
		s.sessionMax = max(s.sessionMax, e.ID)
		s.m.Set(MetricInFlight, float64(s.win.len()))
	}
	return sessionEnd{}, false
}

// next returns the next unsent entry of the pass, reading a page when needed; nil when the journal
// holds nothing more (s.changed is then armed).
func (s *sender) next(ctx context.Context) (*journal.Entry, error) {
	if s.pageIdx < len(s.page) {
		return s.page[s.pageIdx], nil
	}
	if s.changed != nil {
		return nil, nil // waiting for a commit
	}
	s.releaseWrites()        // what this pass published leaves now, not after a journal read
	changed := s.j.Changed() // taken before reading: a commit after the read still wakes us
	// Committed before the read: if still pending, the read sees it. LastID covers IDs that
	// journal.Redrive assigned, which no Publish accepted.
	accepted := max(s.p.lastAccepted.Load(), s.j.LastID())
	page, err := s.j.Read(ctx, s.cursor, s.cfg.ReadBatch)
	if err != nil {
		return nil, err
	}
	clear(s.page)
	s.page, s.pageIdx = page, 0
	if len(page) == 0 {
		// Nothing pending after the cursor: every ID up to the last accepted one is settled.
		if accepted > s.cursor {
			s.cursor = accepted
			s.advance()
		}
		s.changed = changed
		return nil, nil
	}
	s.cursor = page[len(page)-1].ID
	return page[0], nil
}

// releaseWrites sends what the current pass published, if it held any writes back.
func (s *sender) releaseWrites() {
	if s.holding {
		s.holding = false
		s.sess.release()
	}
}

// restartPass makes the next read start after ID after.
func (s *sender) restartPass(after uint64) {
	clear(s.page)
	s.page, s.pageIdx, s.cursor, s.changed = s.page[:0], 0, after, nil
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
	pr := e.Properties
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
	return amqp.Publishing{
		Headers:         h,
		ContentType:     pr.ContentType,
		ContentEncoding: pr.ContentEncoding,
		DeliveryMode:    pr.DeliveryMode,
		Priority:        pr.Priority,
		CorrelationId:   pr.CorrelationID,
		ReplyTo:         pr.ReplyTo,
		Expiration:      pr.Expiration,
		MessageId:       msgID,
		Timestamp:       pr.Timestamp,
		Type:            pr.Type,
		UserId:          pr.UserID,
		AppId:           pr.AppID,
		Body:            e.Body,
	}
}

// publishFailed classifies a failed basic.publish write: the channel or connection is gone.
func (s *sender) publishFailed(ch channel, err error) sessionEnd {
	t := time.NewTimer(time.Second)
	defer t.Stop()
	select {
	case e := <-ch.closed():
		if e != nil {
			return sessionEnd{err: e, connLost: !isChannelLevel(e)}
		}
	case <-t.C:
	}
	return sessionEnd{err: &amqp.Error{Code: amqp.ChannelError, Reason: err.Error()}, connLost: true}
}

// channelClosed is called when the confirm listener closed: the channel is gone; find out why.
func (s *sender) channelClosed(ch channel, c conn) sessionEnd {
	t := time.NewTimer(time.Second)
	defer t.Stop()
	select {
	case e := <-ch.closed():
		return s.classify(e, c)
	case e := <-c.closed():
		return sessionEnd{err: e, connLost: true}
	case <-t.C:
		return sessionEnd{connLost: true}
	}
}

func (s *sender) classify(e *amqp.Error, c conn) sessionEnd {
	if isChannelLevel(e) && !c.isClosed() {
		return sessionEnd{err: e}
	}
	return sessionEnd{err: e, connLost: true}
}

func (s *sender) pauseRetry() {
	if s.retry == nil {
		s.retry = time.NewTimer(s.retryBO.NextBackOff())
	}
}
