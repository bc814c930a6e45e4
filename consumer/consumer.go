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
)

// Handler handles one message. A nil error means the message's effects are done: the Consumer then
// commits its dedup mark and acks it. An error (or a panic) is retried with Config.RetryDelay up to
// Config.MaxAttempts attempts, then the message is parked. ctx is cancelled only when the drain
// after Run's context ended exceeds Config.DrainTimeout.
//
// A crash after the handler returned and before the mark is committed runs the handler again for
// the redelivered message: make effects idempotent, or use a TxHandler.
type Handler func(ctx context.Context, m *Message) error

// TxHandler handles one message inside the bbolt transaction that records its dedup mark: its
// writes through tx commit if and only if the message is marked handled, so a crash at any point
// can neither lose nor repeat them. It runs on the store's writer goroutine, grouped with other
// messages into one transaction, so it must be quick and must not block; it must not call
// tx.Commit or tx.Rollback. An error (or a panic) rolls back its writes only; it is retried and
// parked like a Handler's. It may be called more than once for one delivery (when another
// handler of the same group fails, the group's transaction is rolled back and rerun without it);
// only the writes of the call whose transaction commits take effect.
type TxHandler func(ctx context.Context, tx *bolt.Tx, m *Message) error

// Consumer consumes one queue with exactly-once effects. Create it with New, run it with Run or
// RunTx, release it with Close.
type Consumer struct {
	cfg       Config
	store     Store
	ownsStore bool
	running   atomic.Bool

	closeMu sync.Mutex
	closed  bool
}

// New validates cfg and opens the store (when cfg.Store is nil). It does not connect: Run does.
func New(cfg Config) (*Consumer, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	c := &Consumer{cfg: cfg, store: cfg.Store}
	if c.store == nil {
		s, err := OpenBoltStore(cfg.StorePath, BoltOptions{Logger: cfg.Logger})
		if err != nil {
			return nil, err
		}
		c.store, c.ownsStore = s, true
	}
	return c, nil
}

// Store returns the store in use (a *BoltStore unless Config.Store was set).
func (c *Consumer) Store() Store { return c.store }

// Run consumes until ctx ends, running h for every new message, then drains: it cancels the
// consumer on the broker, lets the handlers already running finish (at most Config.DrainTimeout),
// commits and acks what finished, and returns nil. Deliveries received but not handled stay
// unacked and are redelivered to the next consumer. Connection failures are retried with
// Config.Reconnect (forever by default). Run returns an error wrapping ErrStore when the store fails
// (nothing uncommitted was acked), ErrGaveUp when Config.Reconnect stopped retrying, ErrRunning when
// another Run is active, ErrClosed after Close.
func (c *Consumer) Run(ctx context.Context, h Handler) error {
	if h == nil {
		return fmt.Errorf("%w: nil handler", ErrInvalidConfig)
	}
	return c.run(ctx, h, nil)
}

// RunTx is Run with a transactional handler. It needs the BoltStore, or a Store embedding one
// (ErrNotTxStore otherwise).
func (c *Consumer) RunTx(ctx context.Context, h TxHandler) error {
	if h == nil {
		return fmt.Errorf("%w: nil handler", ErrInvalidConfig)
	}
	if _, ok := c.store.(boltBacked); !ok {
		return ErrNotTxStore
	}
	return c.run(ctx, nil, h)
}

// boltBacked is implemented by *BoltStore and by stores embedding it: their effects get a *bbolt.Tx.
type boltBacked interface{ boltDB() *bolt.DB }

// Close closes the store if New opened it. It does not stop a Run (end its context for that) and
// is idempotent.
func (c *Consumer) Close() error {
	c.closeMu.Lock()
	defer c.closeMu.Unlock()
	if c.closed {
		return nil
	}
	c.closed = true
	if c.ownsStore {
		return c.store.Close()
	}
	return nil
}

func (c *Consumer) run(ctx context.Context, h Handler, th TxHandler) error {
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
	if cl, ok := c.store.(interface{ claim() (func(), error) }); ok {
		release, err := cl.claim()
		if err != nil {
			return err
		}
		defer release()
	}

	r, err := c.newRun(ctx, h, th)
	if err != nil {
		return err
	}
	return r.run()
}

// run is the state of one Run call.
type run struct {
	cfg   *Config
	store Store

	ctx    context.Context // Run's ctx, also cancelled on a fatal error
	cancel context.CancelCauseFunc
	// hctx is the handlers' context: it outlives ctx by at most DrainTimeout.
	hctx    context.Context
	hcancel context.CancelFunc

	handler   Handler
	txHandler TxHandler

	workers  []*worker
	gen      atomic.Uint64 // current session; deliveries of older sessions are not handled
	stopping atomic.Bool   // workers take no new delivery
	stopCh   chan struct{}
	stopOnce sync.Once
	wg       sync.WaitGroup // workers
	aux      sync.WaitGroup // parker, event loop

	done    *queue[doneTag] // finished deliveries, for the session goroutine to ack
	events  *queue[func()]  // callback invocations, for the event goroutine
	auxStop chan struct{}

	parker *parker
	dialer *amqpconn.Dialer

	drainTimer *time.Timer // set by stopWorkers, on the Run goroutine

	fatalMu sync.Mutex
	fatal   error
}

func (c *Consumer) newRun(ctx context.Context, h Handler, th TxHandler) (*run, error) {
	cfg := &c.cfg
	r := &run{
		cfg: cfg, store: c.store, handler: h, txHandler: th,
		stopCh: make(chan struct{}), auxStop: make(chan struct{}),
		done: newQueue[doneTag](), events: newQueue[func()](),
	}
	r.dialer = &amqpconn.Dialer{URLs: cfg.URLs, Heartbeat: cfg.Heartbeat, Backoff: cfg.Reconnect, Logger: cfg.Logger, Name: cfg.Name, TLS: cfg.TLS}
	r.workers = make([]*worker, cfg.Workers)
	for i := range r.workers {
		tr, err := dedup.New(cfg.Dedup)
		if err != nil {
			return nil, fmt.Errorf("%w: %v", ErrInvalidConfig, err)
		}
		r.workers[i] = &worker{r: r, id: i, q: newQueue[*item](), tr: tr}
	}
	states, err := c.store.Load(ctx)
	if err != nil {
		return nil, err
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
	r.aux.Go(r.eventLoop)
	r.aux.Go(r.parker.loop)
	for _, w := range r.workers {
		r.wg.Go(w.loop)
	}
	r.connLoop()
	r.stopWorkers()
	r.wg.Wait()
	r.drainTimer.Stop()
	close(r.auxStop)
	r.aux.Wait()
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
