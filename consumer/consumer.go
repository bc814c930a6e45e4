package consumer

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/rabbitkit/rabbitkit/consumer/dedup"
	"github.com/rabbitkit/rabbitkit/internal/amqpconn"
	"github.com/rabbitkit/rabbitkit/internal/amqpseam"
	"github.com/rabbitkit/rabbitkit/internal/callbacks"
	"github.com/rabbitkit/rabbitkit/internal/fifo"
)

// Handler handles one message. A nil error means the message's effects are done: the Consumer then
// commits its dedup mark and acks it. An error (or a panic) is retried with Config.RetryBackoff up to
// Config.MaxAttempts attempts, then the message is parked; an error wrapping ErrPoison (see Poison)
// parks it at once. ctx is cancelled only when the drain
// after Run's context ended exceeds Config.DrainTimeout.
//
// A crash after the handler returned and before the mark is committed runs the handler again for
// the redelivered message: make effects idempotent, or use a TxHandler.
type Handler func(ctx context.Context, m *Message) error

// TxHandler handles one message inside the store's transaction tx that records its dedup mark
// (T is *bbolt.Tx for BoltStore): its writes through tx commit if and only if the message is
// marked handled, so a crash at any point can neither lose nor repeat them. It runs on the store's
// goroutine, grouped with other messages into one transaction, so it must be quick and must not
// block; it must not commit or roll back tx. An error (or a panic) rolls back its writes only; it
// is retried and parked like a Handler's. It may be called more than once for one delivery (when
// another handler of the same group fails, the group's transaction is rolled back and rerun
// without it); only the writes of the call whose transaction commits take effect.
type TxHandler[T any] func(ctx context.Context, tx T, m *Message) error

// Consumer consumes one queue with exactly-once effects, keeping its dedup state in a Store[T]
// whose transactions are of type T. Create it with New (a BoltStore: T is *bbolt.Tx) or
// NewWithStore, run it with Run or RunTx, release it with Close.
type Consumer[T any] struct {
	cfg       Config
	store     Store[T]
	ownsStore bool
	running   atomic.Bool

	status  *amqpconn.Status // readiness and last connection error (ready.go)
	state   atomic.Int32     // State
	closing chan struct{}    // closed when Close begins

	closeMu     sync.Mutex
	closed      bool
	storeClosed bool
	cur         *run          // the active Run, nil when none
	curDone     chan struct{} // closed when cur's Run returned

	releaseMetrics func() // gives back the metrics identity claimed in New
}

// New validates cfg and opens a BoltStore at cfg.StorePath, which Close closes. It does not
// connect: Run does.
func New(cfg Config) (*Consumer[*bolt.Tx], error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	if cfg.StorePath == "" {
		return nil, fmt.Errorf("%w: no StorePath", ErrInvalidConfig)
	}
	release, err := claimMetrics(&cfg)
	if err != nil {
		return nil, err
	}
	s, err := OpenBoltStore(cfg.StorePath, BoltOptions{Logger: cfg.Logger})
	if err != nil {
		release()
		return nil, err
	}
	return newConsumer[*bolt.Tx](cfg, s, true, release), nil
}

// NewWithStore validates cfg (whose StorePath must be empty) and returns a Consumer keeping its
// dedup state in store. Close leaves store open: the caller closes it after the Consumer.
func NewWithStore[T any](cfg Config, store Store[T]) (*Consumer[T], error) {
	if store == nil {
		return nil, fmt.Errorf("%w: nil store", ErrInvalidConfig)
	}
	if cfg.StorePath != "" {
		return nil, fmt.Errorf("%w: both a store and StorePath", ErrInvalidConfig)
	}
	switch sc := store.Scope(); sc {
	case ScopeExclusive:
	case ScopeShared:
		ss, ok := store.(SharedStore)
		if !ok {
			return nil, fmt.Errorf("%w: a store of shared scope must implement SharedStore", ErrInvalidConfig)
		}
		if cfg.Dedup != (dedup.Config{}) {
			return nil, fmt.Errorf("%w: Config.Dedup is set, but a shared store classifies with its own dedup.Config: set it on the store", ErrInvalidConfig)
		}
		cfg.Dedup = ss.DedupConfig()
	default:
		return nil, fmt.Errorf("%w: store of unknown scope %v", ErrInvalidConfig, sc)
	}
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	release, err := claimMetrics(&cfg)
	if err != nil {
		return nil, err
	}
	return newConsumer(cfg, store, false, release), nil
}

func newConsumer[T any](cfg Config, store Store[T], owns bool, release func()) *Consumer[T] {
	return &Consumer[T]{cfg: cfg, store: store, ownsStore: owns, status: amqpconn.NewStatus(), closing: make(chan struct{}),
		releaseMetrics: release}
}

// Store returns the store in use (a *BoltStore for a Consumer made by New).
func (c *Consumer[T]) Store() Store[T] { return c.store }

// View runs fn in a read-only transaction of the store, for reading what RunTx handlers wrote;
// for a Consumer made by New, tx is a *bbolt.Tx. It may run while Run is active.
func (c *Consumer[T]) View(ctx context.Context, fn func(tx T) error) error {
	return c.store.View(ctx, fn)
}

// Run consumes until ctx ends, running h for every new message, then drains: it cancels the
// consumer on the broker, lets the handlers already running finish (at most Config.DrainTimeout),
// commits and acks what finished, and returns nil. Deliveries received but not handled stay
// unacked and are redelivered to the next consumer. Connection failures are retried with
// Config.ReconnectBackoff (forever by default). Run returns an error wrapping ErrStore when the store fails
// (nothing uncommitted was acked), ErrGaveUp when Config.ReconnectBackoff stopped retrying, ErrRunning when
// another Run of this Consumer is active, ErrStoreInUse when another Consumer's Run holds the
// store, ErrClosed after Close.
func (c *Consumer[T]) Run(ctx context.Context, h Handler) error {
	if h == nil {
		return fmt.Errorf("%w: nil handler", ErrInvalidConfig)
	}
	return c.run(ctx, h, newBackend[T](c.store, nil, c.cfg.Metrics))
}

// RunTx is Run with a transactional handler: h runs inside the store's transaction that marks the
// message handled, so its writes through tx commit exactly once per message.
func (c *Consumer[T]) RunTx(ctx context.Context, h TxHandler[T]) error {
	if h == nil {
		return fmt.Errorf("%w: nil handler", ErrInvalidConfig)
	}
	return c.run(ctx, nil, newBackend(c.store, h, c.cfg.Metrics))
}

// Close stops a running Run or RunTx and releases the store if New opened it (a store given to
// NewWithStore stays open: the caller closes it). Stopping is a drain: no new deliveries are
// taken, the handlers running finish and their marks commit and are acked, and Run returns nil.
// When ctx ends first, the handlers' context is cancelled (stop now: what has not committed stays
// unacked and is redelivered), Close returns ctx's error, and the store is closed by Run when it
// returns. Cancelling Run's own context drains too, bounded by Config.DrainTimeout. Close is
// idempotent; Run and RunTx return ErrClosed after it.
func (c *Consumer[T]) Close(ctx context.Context) error {
	c.closeMu.Lock()
	if c.closed {
		c.closeMu.Unlock()
		return nil
	}
	c.closed = true
	close(c.closing)
	r, done := c.cur, c.curDone
	c.closeMu.Unlock()
	defer c.releaseMetrics()
	if r != nil {
		r.stopWorkers()
		r.cancel(nil)
		select {
		case <-done:
		case <-ctx.Done():
			r.hcancel()
			return fmt.Errorf("consumer: close: %w (handlers cancelled; the store is closed when Run returns)", ctx.Err())
		}
	}
	return c.closeStore()
}

// closeStore closes an owned store once: after Close, when no Run is active.
func (c *Consumer[T]) closeStore() error {
	c.closeMu.Lock()
	defer c.closeMu.Unlock()
	if !c.ownsStore || c.storeClosed || !c.closed || c.cur != nil {
		return nil
	}
	c.storeClosed = true
	return c.store.Close()
}

func (c *Consumer[T]) run(ctx context.Context, h Handler, be backend) error {
	c.closeMu.Lock()
	closed := c.closed
	c.closeMu.Unlock()
	if closed {
		return ErrClosed
	}
	if !c.running.CompareAndSwap(false, true) {
		return ErrRunning
	}
	defer c.running.Store(false)
	release, err := be.claim(ctx)
	if err != nil {
		return err
	}
	released := false
	defer func() {
		if !released {
			release()
		}
	}()

	r, err := newRun(ctx, &c.cfg, h, be)
	if err == nil {
		r.status, r.state = c.status, &c.state
	}
	if err != nil {
		return err
	}
	c.closeMu.Lock()
	if c.closed {
		c.closeMu.Unlock()
		return ErrClosed
	}
	done := make(chan struct{})
	c.cur, c.curDone = r, done
	c.closeMu.Unlock()
	defer func() {
		// The store's claim first: once Close returns (done), another Run may take the store.
		release()
		released = true
		c.closeMu.Lock()
		c.cur, c.curDone = nil, nil
		c.closeMu.Unlock()
		close(done)
		_ = c.closeStore() // Close gave up waiting: the store is released here
	}()
	return r.run()
}

// run is the state of one Run call.
type run struct {
	cfg   *Config
	store backend

	ctx    context.Context // Run's ctx, also cancelled on a fatal error
	cancel context.CancelCauseFunc
	// hctx is the handlers' context: it outlives ctx by at most DrainTimeout.
	hctx    context.Context
	hcancel context.CancelFunc

	handler Handler // nil for RunTx: store.transactional()

	status *amqpconn.Status // the Consumer's
	state  *atomic.Int32    // the Consumer's State

	workers     []*worker
	gen         atomic.Uint64 // current session; deliveries of older sessions are not handled
	stopping    atomic.Bool   // workers take no new delivery
	stopCh      chan struct{}
	stopOnce    sync.Once
	wg          sync.WaitGroup // workers
	workersLeft atomic.Int32   // workers not yet returned
	workersDone chan struct{}  // closed by the last worker to return
	aux         sync.WaitGroup // parker

	done    *fifo.Queue[doneTag] // finished deliveries, for the session goroutine to ack
	events  *callbacks.Loop      // runs the user's callbacks, in order, on a goroutine of its own
	auxStop chan struct{}

	parker *parker
	dialer amqpseam.Dialer

	drainTimer *time.Timer // set by stopWorkers, on the Run goroutine

	fatalMu sync.Mutex
	fatal   error
}

func newRun(ctx context.Context, cfg *Config, h Handler, be backend) (*run, error) {
	r := &run{
		cfg: cfg, store: be, handler: h,
		stopCh: make(chan struct{}), auxStop: make(chan struct{}),
		done: fifo.New[doneTag](),
	}
	r.dialer = cfg.dial
	if r.dialer == nil {
		r.dialer = amqpseam.Dial(&amqpconn.Dialer{URLs: cfg.URLs, Heartbeat: cfg.Heartbeat, Backoff: cfg.ReconnectBackoff, Logger: cfg.Logger, Name: cfg.ConnectionName, TLS: cfg.TLS,
			OnError: func(err error) { r.status.Fail(err) }})
	}
	r.workers = make([]*worker, cfg.Workers)
	for i := range r.workers {
		tr, err := dedup.New(cfg.Dedup)
		if err != nil {
			return nil, fmt.Errorf("%w: %v", ErrInvalidConfig, err)
		}
		r.workers[i] = &worker{r: r, id: i, q: fifo.New[*item](), tr: tr}
	}
	var states []StreamState
	if !be.shared() {
		// A shared store's state moves under other replicas: the workers' windows start empty and
		// are refreshed with Peek before each batch.
		var err error
		if states, err = be.load(ctx); err != nil {
			return nil, err
		}
	}
	for _, st := range states {
		w := r.workers[r.workerOf(st.Key)]
		if err := w.tr.Load(st.Key, st.State); err != nil {
			// A corrupt state must not be silently replaced by an empty one: that would let every
			// redelivered message of the stream through again.
			return nil, fmt.Errorf("%w: stream %s: %w", ErrStore, st.Key, err)
		}
	}
	n := 0
	for _, w := range r.workers {
		n += w.tr.Len()
		w.streams.Store(int64(w.tr.Len()))
	}
	cfg.Metrics.Set(MetricStreams, float64(n))
	r.ctx, r.cancel = context.WithCancelCause(ctx)
	r.hctx, r.hcancel = context.WithCancel(context.WithoutCancel(ctx))
	r.parker = &parker{r: r, reqs: make(chan *parkReq)}
	return r, nil
}

func (r *run) run() error {
	defer r.hcancel()
	defer r.cancel(nil)
	r.events = callbacks.Start(r.cfg.Logger, "consumer")
	r.aux.Go(r.parker.loop)
	r.workersDone = make(chan struct{})
	r.workersLeft.Store(int32(len(r.workers)))
	for _, w := range r.workers {
		r.wg.Go(w.loop)
	}
	r.connLoop()
	r.stopWorkers()
	r.wg.Wait()
	r.setState(StateIdle, "", nil)
	r.drainTimer.Stop()
	close(r.auxStop)
	r.aux.Wait()
	r.events.Close() // the workers and the parker have stopped: nothing is pushed any more
	r.fatalMu.Lock()
	defer r.fatalMu.Unlock()
	return r.fatal
}

// stopWorkers makes workers finish the delivery in hand and exit; DrainTimeout later the handlers'
// context is cancelled.
func (r *run) stopWorkers() {
	r.stopOnce.Do(func() {
		r.stopping.Store(true)
		close(r.stopCh)
		r.drainTimer = time.AfterFunc(r.cfg.DrainTimeout, r.hcancel)
	})
}

// fail records a fatal error and ends the run.
func (r *run) fail(err error) {
	// Stop the workers first: the failed worker's dedup window may be ahead of the store, and
	// nothing it classifies from now on may be acked.
	r.stopping.Store(true)
	r.fatalMu.Lock()
	if r.fatal == nil {
		r.fatal = err
		r.cfg.Logger.Error("consumer: stopping after a fatal error", "err", err)
	}
	r.fatalMu.Unlock()
	r.cancel(err)
}

func (r *run) workerOf(k dedup.Key) int {
	if len(r.workers) == 1 {
		return 0
	}
	h := uint32(2166136261)
	for i := 0; i < len(k.Source); i++ {
		h = (h ^ uint32(k.Source[i])) * 16777619
	}
	h = (h ^ 0xff) * 16777619
	for i := 0; i < len(k.Stream); i++ {
		h = (h ^ uint32(k.Stream[i])) * 16777619
	}
	return int(h % uint32(len(r.workers)))
}
