package publisher

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/rabbitkit/rabbitkit/internal/amqpconn"
	"github.com/rabbitkit/rabbitkit/internal/amqpseam"
	"github.com/rabbitkit/rabbitkit/internal/callbacks"
	"github.com/rabbitkit/rabbitkit/journal"
	"github.com/rabbitkit/rabbitkit/metrics"
)

// State is the connection state of the sender.
type State int32

// Connection states.
const (
	StateConnecting State = iota // dialing, opening the channel or declaring the topology
	StateReady                   // channel open: sending
	StateBlocked                 // connected, but the broker blocked publishing (resource alarm)
	StateClosed                  // Close finished
)

// String implements fmt.Stringer.
func (s State) String() string {
	switch s {
	case StateConnecting:
		return "connecting"
	case StateReady:
		return "ready"
	case StateBlocked:
		return "blocked"
	case StateClosed:
		return "closed"
	}
	return fmt.Sprintf("state(%d)", int32(s))
}

// StateChange is passed to Config.OnStateChange.
type StateChange struct {
	From, To State
	URL      string // broker URL, password redacted
	// Err is what caused the change: why the connection or channel was lost (To is
	// StateConnecting), or the broker's alarm (To is StateBlocked). Nil when a session came up
	// (StateReady), the alarm ended, or Close stopped the Publisher.
	Err error
}

// Message is what Publish sends. Only Body and the destination are usually set.
type Message struct {
	Exchange   string
	RoutingKey string
	// Stream is the sequence space (rk-stream). Default protocol.DefaultStream(Exchange, RoutingKey).
	// Messages of one stream reach the broker in Publish order.
	Stream string
	// Headers are sent as AMQP headers. rk-* headers are overwritten with the stamp.
	Headers amqp.Table
	// Body must not be modified until the receipt is journaled (Publish has returned).
	Body []byte

	ContentType     string
	ContentEncoding string
	DeliveryMode    uint8 // default amqp.Persistent
	Priority        uint8
	CorrelationID   string
	ReplyTo         string
	Expiration      string
	MessageID       string // default "<source>/<epoch>/<stream>/<seq>"
	Timestamp       time.Time
	Type            string
	UserID          string
	AppID           string
}

// Stats is a snapshot of the Publisher.
type Stats struct {
	State     State
	Blocked   bool   // the broker blocked the connection (resource alarm)
	URL       string // broker of the current or last connection, password redacted
	Accepted  uint64 // messages journaled by this Publisher
	Confirmed uint64 // positive confirms
	Nacked    uint64 // basic.nack confirms (each is resent or parked)
	Returned  uint64 // basic.return (unroutable)
	Parked    uint64 // entries parked by this Publisher
	// LastError is the latest connection error: a failed dial (a wrong password, a TLS failure, a
	// refused vhost, a refused TCP connection), a failed channel set-up (confirm.select, the
	// topology), or what ended a session. It stays after a later session comes up (State tells
	// whether it is current); nil if there was none. LastErrorAt is when it happened.
	LastError   error
	LastErrorAt time.Time
	Journal     journal.Stats
}

type counters struct {
	accepted, confirmed, nacked, returned, parked atomic.Uint64
}

// Publisher journals messages and sends them with publisher confirms. Create it with New; all methods
// are safe for concurrent use.
type Publisher struct {
	cfg        Config
	j          *journal.Journal // nil in a Relay
	out        Outbox           // what the sender sends: the journal, or a Relay's outbox
	ownJournal bool
	log        *slog.Logger
	m          metrics.Recorder

	mu      sync.RWMutex
	closed  bool
	closing chan struct{} // closed when Close begins
	calls   sync.WaitGroup

	queue      chan *job
	drain      chan struct{} // closed when the appender must finish the queue and exit
	appendDone chan struct{}
	senderDone chan struct{}
	hardCtx    context.Context
	hardCancel context.CancelFunc
	stopCtx    context.Context
	stopCancel context.CancelFunc
	wg         sync.WaitGroup

	connMu  sync.Mutex
	curConn amqpseam.Conn // for ForceClose from Close only

	state   atomic.Int32
	blocked atomic.Bool
	status  *amqpconn.Status // URL, readiness and the last connection error (ready.go)
	cb      *callbacks.Loop  // runs OnParked and OnStateChange, in order, off the sender goroutine
	c       counters

	lastAccepted atomic.Uint64
	fr           frontier

	releaseMetrics func() // gives back the metrics identity claimed in New

	closeOnce sync.Once
	closeDone chan struct{}
	closeErr  error
}

// New validates cfg, opens the journal when cfg.JournalPath is set, and starts the Publisher: it
// connects in the background (Publish never waits for the broker) and first resends whatever a
// previous process left in the journal.
func New(cfg Config) (*Publisher, error) {
	cfg, err := cfg.validate()
	if err != nil {
		return nil, err
	}
	p := &Publisher{cfg: cfg, j: cfg.Journal, log: cfg.Logger, status: amqpconn.NewStatus()}
	if err := p.claimMetrics(); err != nil {
		return nil, err
	}
	if p.j == nil {
		opts := cfg.JournalOptions
		if opts.Source == "" {
			opts.Source = cfg.Source
		}
		if opts.Logger == nil {
			opts.Logger = cfg.Logger
		}
		if opts.TailCacheBytes == 0 {
			// The sender follows the tail closely; a small cache serves it and keeps the heap
			// small (see the backlog memory test).
			opts.TailCacheBytes = defaultTailCache
		}
		p.j, err = journal.Open(cfg.JournalPath, opts)
		if err != nil {
			p.releaseMetrics()
			return nil, fmt.Errorf("publisher: open journal: %w", err)
		}
		p.ownJournal = true
		if p.j.Source() != cfg.Source {
			_ = p.j.Close()
			p.releaseMetrics()
			return nil, fmt.Errorf("%w: Source %q does not match the journal's %q", ErrInvalidConfig, cfg.Source, p.j.Source())
		}
	}
	p.start(p.j, true)
	return p, nil
}

// start starts the sender (and, with appender, the appender) over out.
func (p *Publisher) start(out Outbox, appender bool) {
	cfg := p.cfg
	if cfg.dial == nil {
		p.cfg.dial = amqpseam.Dial(&amqpconn.Dialer{URLs: cfg.URLs, Heartbeat: cfg.Heartbeat, Backoff: cfg.ReconnectBackoff,
			Logger: cfg.Logger, Name: cfg.ConnectionName, BatchWrites: true, TLS: cfg.TLS, OnError: p.status.Fail})
	}
	p.cb = callbacks.Start(cfg.Logger, "publisher")
	p.closing = make(chan struct{})
	p.queue = make(chan *job, cfg.MaxBuffered)
	p.drain = make(chan struct{})
	p.appendDone = make(chan struct{})
	p.senderDone = make(chan struct{})
	p.closeDone = make(chan struct{})
	p.hardCtx, p.hardCancel = context.WithCancel(context.Background())
	p.stopCtx, p.stopCancel = context.WithCancel(p.hardCtx)
	p.fr.init()
	// What a previous process left in the journal counts as accepted: Flush waits for it too. IDs
	// below the first pending one are settled (confirmed or parked) already, so that a Flush with
	// nothing pending returns at once, even before the broker is reachable.
	// LastID is read once, before the first pending entry: an entry added in between (a shared
	// journal) has a higher ID and is not settled by mistake.
	if appender { // a Relay accepts nothing: no receipts to settle
		last := out.LastID()
		p.lastAccepted.Store(last)
		switch first, err := out.Read(context.Background(), 0, 1); {
		case err != nil:
			// The sender reports and retries the read; Flush waits for it meanwhile.
			p.log.Warn("publisher: reading the journal's first pending entry failed", "err", err)
		case len(first) > 0:
			p.fr.advance(first[0].ID - 1)
		default:
			p.fr.advance(last)
		}
	}

	if cfg.outbox != nil {
		out = cfg.outbox(out)
	}
	p.out = out
	del := newDeleter(out, p)
	s := &sender{p: p, cfg: p.cfg, j: out, log: p.log, m: p.m, win: newWindow(cfg.MaxInFlight), del: del,
		shutdown: shutdownState{signal: p.stopCtx.Done()}, state: StateConnecting, spells: spellTracker{grace: cfg.MissingExchangeGrace}}
	if appender {
		p.wg.Go(func() {
			defer close(p.appendDone)
			p.appendLoop(p.hardCtx)
		})
	} else {
		close(p.appendDone)
	}
	p.wg.Go(del.run)
	p.wg.Go(func() {
		defer close(p.senderDone)
		defer close(del.in)
		s.run(p.hardCtx, p.stopCtx)
	})
}

// Journal returns the journal the Publisher writes to (for Stats, Parked, Redrive).
func (p *Publisher) Journal() *journal.Journal { return p.j }

// Blocked reports whether the broker currently blocks the connection (connection.blocked: a memory
// or disk alarm). Publish keeps accepting into the journal meanwhile.
func (p *Publisher) Blocked() bool { return p.blocked.Load() }

// State returns the current connection state.
func (p *Publisher) State() State { return State(p.state.Load()) }

// Stats returns a snapshot of counters, connection state and the journal's statistics. Its cost
// grows with the number of streams (it copies each one's next sequence number); to poll the
// backlog, use Journal().Backlog().
func (p *Publisher) Stats() Stats {
	st := p.status.Snapshot()
	return Stats{
		State: p.State(), Blocked: p.Blocked(), URL: redactURL(st.URL),
		Accepted: p.c.accepted.Load(), Confirmed: p.c.confirmed.Load(), Nacked: p.c.nacked.Load(),
		Returned: p.c.returned.Load(), Parked: p.c.parked.Load(),
		LastError: st.LastErr, LastErrorAt: st.LastAt,
		Journal: p.journalStats(),
	}
}

func (p *Publisher) journalStats() journal.Stats {
	if p.j == nil {
		return journal.Stats{}
	}
	return p.j.Stats()
}

func (p *Publisher) setState(st State, url string) {
	p.state.Store(int32(st))
	p.status.Set(url, st == StateReady || st == StateBlocked)
}

func (p *Publisher) setConn(c amqpseam.Conn) {
	p.connMu.Lock()
	p.curConn = c
	p.connMu.Unlock()
}

// Flush waits until every message accepted so far (by this Publisher, and everything journaled
// before them, including what a previous process left in the journal and entries re-driven with
// journal.Redrive) has a final outcome: confirmed, or parked (reported through OnParked and the
// receipts). It returns ctx's error if ctx ends first and ErrClosed if the Publisher closes first.
func (p *Publisher) Flush(ctx context.Context) error {
	p.mu.RLock()
	closed := p.closed
	p.mu.RUnlock()
	if closed {
		return ErrClosed
	}
	// The journal's LastID also covers entries re-driven (journal.Redrive) since.
	target := max(p.lastAccepted.Load(), p.out.LastID())
	if target == 0 {
		return nil
	}
	w := &Receipt{p: p, id: target, done: make(chan struct{})}
	p.fr.wait(w)
	select {
	case <-w.done:
		if errors.Is(w.err, ErrUnconfirmed) {
			return ErrClosed
		}
		return nil
	case <-ctx.Done():
		return fmt.Errorf("publisher: flush: %w", ctx.Err())
	}
}

// Close stops accepting (ErrClosed), journals what was already handed to PublishAsync, waits for
// the confirms of messages in flight until ctx ends, then closes the connection and joins every
// goroutine. Whatever is not confirmed stays in the journal and is sent first by the next Publisher
// on it. A journal opened from Config.JournalPath is closed. Close is idempotent: later calls wait
// (bounded by their ctx) for the first and return its result.
func (p *Publisher) Close(ctx context.Context) error {
	p.closeOnce.Do(func() {
		defer close(p.closeDone)
		defer p.releaseMetrics()
		p.closeErr = p.close(ctx)
	})
	select {
	case <-p.closeDone:
		return p.closeErr
	case <-ctx.Done():
		return fmt.Errorf("publisher: close: %w", ctx.Err())
	}
}

func (p *Publisher) close(ctx context.Context) error {
	p.mu.Lock()
	p.closed = true
	close(p.closing)
	p.mu.Unlock()
	p.calls.Wait() // callers blocked on a full buffer return ErrClosed at once
	var errs []error
	close(p.drain)
	select {
	case <-p.appendDone:
	case <-ctx.Done():
	}
	p.stopCancel()
	select {
	case <-p.senderDone:
	case <-ctx.Done():
		errs = append(errs, fmt.Errorf("publisher: close: in-flight messages left unconfirmed in the journal: %w", ctx.Err()))
	}
	p.hardCancel()
	p.connMu.Lock()
	if p.curConn != nil {
		p.curConn.ForceClose() // a write blocked by a broker alarm cannot see ctx
	}
	p.connMu.Unlock()
	p.wg.Wait()
	p.cb.Close() // the sender has stopped: the callbacks it queued run before Close returns
	p.fr.close()
	if p.ownJournal {
		if err := p.j.Close(); err != nil {
			errs = append(errs, fmt.Errorf("publisher: close journal: %w", err))
		}
	}
	return errors.Join(errs...)
}

// enter registers a call that may hand a job to the appender; false once Close has begun.
func (p *Publisher) enter() bool {
	p.mu.RLock()
	defer p.mu.RUnlock()
	if p.closed {
		return false
	}
	p.calls.Add(1)
	return true
}

func redactURL(u string) string {
	if u == "" {
		return ""
	}
	return amqpconn.Redact(u)
}
