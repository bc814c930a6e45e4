package publisher

import (
	"context"
	"errors"
	"log/slog"
	"time"

	"github.com/cenkalti/backoff/v4"
	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/rabbitkit/rabbitkit/internal/amqpseam"
	"github.com/rabbitkit/rabbitkit/journal"
	"github.com/rabbitkit/rabbitkit/metrics"
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

	shutdown shutdownState // Close's phase
	pass     passState     // the read position in the outbox (pass.go)
	fault    faultState    // after a nack or a channel error (confirm.go, chanerr.go)
	link     linkState     // the connection and the running session (sender.go, session.go)
	spells   spellTracker  // exchanges refusing with 404 or 403 (park.go)
	state    State
	deletes  []uint64 // confirmed IDs not yet handed to the deleter (deleter.go)
	ticker   *time.Ticker
	maxSent  uint64 // highest ID ever sent: sends at or below it are resends

	// hdr is the headers table of every publish, reused: amqp091-go encodes it before Publish returns.
	hdr   amqp.Table
	idBuf []byte // the stamp's encoding, reused
}

// shutdownState: Close began (signal closed); the sender then sends nothing new and, draining,
// waits for the in-flight confirms.
type shutdownState struct {
	signal   <-chan struct{}
	draining bool
}

// passState is the read position within the current pass over the outbox, which starts at ID 0 on
// every channel.
type passState struct {
	page    []*journal.Entry
	idx     int             // next entry of page to send
	cursor  uint64          // highest ID read in this pass
	changed <-chan struct{} // armed when the outbox had nothing more: its next commit
}

// faultState is owned by the handling of nacks and channel errors.
type faultState struct {
	rewindTo   uint64           // after a nack: once the window drains, resend from this ID
	nacked     []*journal.Entry // nacked entries, recorded once the window drains
	probeUntil uint64           // send one message at a time while the next ID <= probeUntil
	backoff    backoff.BackOff  // Config.RetryBackoff: waits between failing attempts
	retry      *time.Timer      // sending paused until it fires (nil: not paused)
	failing    bool             // backoff has advanced since the last positive confirm
	// culpritParked: the last channel error's culprit was parked, so the cause is gone and the
	// channel reopens without a backoff.
	culpritParked bool
}

// linkState is the connection and its running session.
type linkState struct {
	conn      amqpseam.Conn        // the connection of the running session, nil between sessions
	blocks    <-chan amqp.Blocking // the current connection's blocked listener (registered at dial)
	url       string               // the URL it was dialled at
	dials     int                  // connections made so far
	recovered bool                 // a positive confirm on the current connection (or it lived healthySession)
	blocked   bool                 // the broker blocked the connection (resource alarm)
	holding   bool                 // the pass's writes are held back since its first publish
	frameMax  int                  // the negotiated frame size (checkWire)
	maxSent   uint64               // highest ID sent on the current channel
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

// errConnLost is the cause of a session that ended without a reason (a connection closed without a
// close frame, or a confirm listener closed with no close notification within a second).
var errConnLost = errors.New("publisher: connection lost (no reason given)")

// cause is why the session ended, as an error: never a nil *amqp.Error inside a non-nil error.
func (e sessionEnd) cause() error {
	if e.err != nil {
		return e.err
	}
	return errConnLost
}

// run is the sender goroutine. ctx is the hard stop (Close's context ended); dialCtx ends when Close
// begins, abandoning a dial or a backoff in progress.
func (s *sender) run(ctx, dialCtx context.Context) {
	s.ticker = time.NewTicker(time.Second)
	defer s.ticker.Stop()
	defer s.setState(StateClosed, nil)
	defer s.flushDeletes(true)
	connBO := s.cfg.ReconnectBackoff()
	s.fault.backoff = s.cfg.RetryBackoff()
	var c amqpseam.Conn
	for {
		if s.stopped(ctx) {
			if c != nil {
				s.dropConn(c)
			}
			return
		}
		if c == nil {
			if s.link.dials > 0 && !s.link.recovered {
				// The last connection died without a single confirm: don't hot-loop on a broker
				// that accepts connections and then drops them.
				if !s.sleep(ctx, connBO.NextBackOff(), nil) {
					continue
				}
			}
			s.setState(StateConnecting, nil)
			nc, url, err := s.cfg.dial.Dial(dialCtx)
			if err != nil {
				if !s.stopped(ctx) {
					// Only a ReconnectBackoff that gives up gets here: keep trying, slowly.
					s.p.status.Fail(err)
					s.log.Error("publisher: dial failed", "err", err)
					s.sleep(ctx, connBO.NextBackOff(), nil)
				}
				continue
			}
			s.link.blocks = nc.NotifyBlocked(blockedSize)
			if s.link.dials > 0 {
				s.m.Add(MetricReconnects, 1)
			}
			s.link.dials++
			s.link.recovered = false
			c, s.link.url = nc, url
			s.p.setConn(c)
			s.setBlocked(false, "")
		}
		ch, err := openChannel(dialCtx, c, s.cfg.MaxInFlight, s.cfg.Topology)
		if err != nil {
			ae := amqpErr(err)
			if isChannelLevel(ae) && !c.IsClosed() {
				// Typically a topology conflict (406) or missing permissions (403): it needs an
				// operator; keep accepting into the journal and retry with backoff.
				s.p.status.Fail(err)
				s.log.Error("publisher: channel set-up failed; retrying", "err", err)
				s.m.Add(MetricChannelErrors, 1)
				s.fault.failing = true
				if !s.sleep(ctx, s.fault.backoff.NextBackOff(), c) && c.IsClosed() {
					s.dropConn(c)
					c = nil
				}
				continue
			}
			if !s.stopped(ctx) {
				s.p.status.Fail(err)
				s.log.Warn("publisher: connection lost while opening the channel", "err", err)
			}
			s.dropConn(c)
			c = nil
			continue
		}
		if s.link.recovered {
			connBO.Reset()
		}
		s.setState(StateReady, nil)
		began := time.Now()
		end := s.session(ctx, c, ch)
		if time.Since(began) >= healthySession {
			s.link.recovered = true // an idle but stable connection counts as progress
		}
		s.endSession(ctx, end)
		if end.stop {
			_ = ch.ch.Close()
			s.dropConn(c)
			return
		}
		cause := end.cause()
		s.p.status.Fail(cause)
		if end.connLost || c.IsClosed() {
			s.setState(StateConnecting, cause)
			s.log.Warn("publisher: connection lost; reconnecting", "url", redactURL(s.link.url), "err", cause)
			s.dropConn(c)
			c = nil
			if s.link.recovered {
				connBO.Reset()
			}
			continue
		}
		// Channel-level error with a healthy connection: reopen just the channel, after a backoff.
		s.setState(StateConnecting, cause)
		s.log.Warn("publisher: channel closed by the broker; reopening", "err", cause)
		_ = ch.ch.Close()
		var wait time.Duration // none when the message that broke the channel is parked (progress)
		if !s.fault.culpritParked {
			wait = s.fault.backoff.NextBackOff()
		}
		if !s.sleep(ctx, wait, c) && c.IsClosed() {
			s.dropConn(c)
			c = nil
		}
	}
}

// dropConn closes c (bounded) and forgets it.
func (s *sender) dropConn(c amqpseam.Conn) {
	s.p.setConn(nil)
	s.link.blocks = nil
	_ = c.Close(time.Now().Add(time.Second))
}

// stopped reports whether the sender must exit now (window empty or hard stop).
func (s *sender) stopped(ctx context.Context) bool {
	if ctx.Err() != nil {
		return true
	}
	select {
	case <-s.shutdown.signal:
		s.shutdown.draining = true
	default:
	}
	return s.shutdown.draining && s.win.len() == 0
}

// sleep waits d (or until stop / hard stop / loss of c). It keeps draining c's notifications. It
// reports whether the full wait elapsed.
func (s *sender) sleep(ctx context.Context, d time.Duration, c amqpseam.Conn) bool {
	if d == backoff.Stop {
		d = 30 * time.Second
	}
	t := time.NewTimer(d)
	defer t.Stop()
	var blocked <-chan amqp.Blocking
	var closed <-chan *amqp.Error
	if c != nil {
		blocked, closed = s.link.blocks, c.Closed()
	}
	for {
		select {
		case <-t.C:
			return true
		case <-s.shutdown.signal:
			s.shutdown.draining = true
			return false
		case <-ctx.Done():
			return false
		case b, ok := <-blocked:
			if !ok {
				blocked = nil
				continue
			}
			s.setBlocked(b.Active, b.Reason)
		case <-closed:
			return false
		case <-s.ticker.C:
			s.sample()
		}
	}
}

func (s *sender) classify(e *amqp.Error, c amqpseam.Conn) sessionEnd {
	if isChannelLevel(e) && !c.IsClosed() {
		return sessionEnd{err: e}
	}
	return sessionEnd{err: e, connLost: true}
}

func (s *sender) pauseRetry() {
	if s.fault.retry == nil {
		s.fault.retry = time.NewTimer(s.fault.backoff.NextBackOff())
	}
}
