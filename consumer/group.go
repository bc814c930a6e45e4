package consumer

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"sync"
	"time"

	"github.com/rabbitkit/rabbitkit/topology"
)

// Leaser shares the partitions of a group among its live members: the kit's equivalent of a Kafka
// consumer group's coordinator. consumer/pginbox implements it in the inbox's database. Every
// method is called by the group's own goroutine; a member's leases are valid until the time its
// last successful Renew or Acquire returned plus the ttl it passed.
type Leaser interface {
	// Renew records member as live until now+ttl, extends the leases member still holds, and
	// returns them with member's fair share of the n partitions among the live members: with
	// the members sorted, the k-th gets n/m, plus one if k < n%m.
	Renew(ctx context.Context, group, member string, n int, ttl time.Duration) (held []int, share int, err error)
	// Acquire takes up to max partitions of the n that no live lease holds, for member until
	// now+ttl, and returns them.
	Acquire(ctx context.Context, group, member string, n, max int, ttl time.Duration) ([]int, error)
	// Release gives back member's leases of parts.
	Release(ctx context.Context, group, member string, parts []int) error
	// Leave gives back every lease of member and removes it from the group.
	Leave(ctx context.Context, group, member string) error
}

// DefaultLeaseTTL is GroupConfig.LeaseTTL's default.
const DefaultLeaseTTL = 10 * time.Second

// GroupConfig configures a Group.
type GroupConfig struct {
	// Config is the configuration of each partition's consumer. Queue and Topology are set by the
	// group (Partitions' queue and topology), StorePath must be empty: the group runs on a shared
	// store.
	Config
	// Partitions is the partitioned queue to consume (required).
	Partitions topology.Partitions
	// Leaser assigns partitions among the group's members (required; pginbox.Store is one).
	Leaser Leaser
	// Group names the group in the Leaser: processes with the same Group share its partitions.
	// Default Partitions.Queue.
	Group string
	// Member identifies this process in the group; it must be unique among the live members.
	// Default "<hostname>-<pid>-<random>".
	Member string
	// LeaseTTL is how long a member's leases last without renewal; the group renews them every
	// LeaseTTL/5. A member that dies loses its partitions to the others within about
	// LeaseTTL + LeaseTTL/5. Default DefaultLeaseTTL.
	LeaseTTL time.Duration
	// OnAssign is called (on the group's goroutine) with the partitions this member holds after
	// each change.
	OnAssign func(held []int)
}

// Group consumes a partitioned queue (topology.Partitions) with exactly-once effects and
// per-stream order, over any number of processes: each member holds a fair share of the
// partitions (a lease in the Leaser) and runs one Consumer on each; the queues'
// x-single-active-consumer is the broker's guard that one consumer at a time takes from a
// partition, and the shared store's dedup makes a hand-over exactly-once. See docs/DESIGN.md,
// "Partitioned groups".
type Group[T any] struct {
	cfg   GroupConfig
	store Store[T]

	mu   sync.Mutex
	held []int
}

// NewGroup validates cfg and returns a Group on store, which must be of ScopeShared (several
// members and their hand-overs share its state). Close store after the Group's Run returned.
func NewGroup[T any](cfg GroupConfig, store Store[T]) (*Group[T], error) {
	bad := func(format string, args ...any) (*Group[T], error) {
		return nil, fmt.Errorf("%w: group: %s", ErrInvalidConfig, fmt.Sprintf(format, args...))
	}
	if store == nil || store.Scope() != ScopeShared {
		return bad("a group needs a store of shared scope (consumer/pginbox)")
	}
	if cfg.Leaser == nil {
		return bad("no Leaser")
	}
	if err := cfg.Partitions.Validate(); err != nil {
		return bad("%v", err)
	}
	if cfg.Queue != "" || len(cfg.Topology.Queues)+len(cfg.Topology.Exchanges)+len(cfg.Topology.Bindings) > 0 {
		return bad("Queue and Topology are the group's (Partitions)")
	}
	if cfg.Group == "" {
		cfg.Group = cfg.Partitions.Queue
	}
	if cfg.Member == "" {
		host, _ := os.Hostname()
		var b [4]byte
		_, _ = rand.Read(b[:])
		cfg.Member = fmt.Sprintf("%s-%d-%s", host, os.Getpid(), hex.EncodeToString(b[:]))
	}
	if cfg.LeaseTTL == 0 {
		cfg.LeaseTTL = DefaultLeaseTTL
	}
	if cfg.LeaseTTL < 100*time.Millisecond {
		return bad("LeaseTTL %v below 100ms", cfg.LeaseTTL)
	}
	// Check the per-partition config once, here.
	c, err := NewWithStore(cfg.partitionConfig(0), store)
	if err != nil {
		return nil, err
	}
	_ = c.Close(context.Background()) // never run: gives back its metrics identity
	return &Group[T]{cfg: cfg, store: store}, nil
}

func (c *GroupConfig) partitionConfig(i int) Config {
	pc := c.Config
	pc.Queue = c.Partitions.QueueName(i)
	pc.Topology = c.Partitions.Topology()
	if pc.ConnectionName == "" {
		pc.ConnectionName = "rabbitkit-consumer"
	}
	pc.ConnectionName = fmt.Sprintf("%s-p%d", pc.ConnectionName, i)
	return pc
}

// Member returns this member's id.
func (g *Group[T]) Member() string { return g.cfg.Member }

// Held returns the partitions this member consumes now.
func (g *Group[T]) Held() []int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return slices.Clone(g.held)
}

// Run is RunTx with a plain handler.
func (g *Group[T]) Run(ctx context.Context, h Handler) error {
	if h == nil {
		return fmt.Errorf("%w: nil handler", ErrInvalidConfig)
	}
	return g.run(ctx, func(c *Consumer[T], ctx context.Context) error { return c.Run(ctx, h) })
}

// RunTx joins the group and consumes the partitions it is given until ctx ends, then drains every
// partition (as Consumer.Run does) and leaves the group, so the others take them over at once. A
// partition's Run that fails is reported and started again; RunTx returns when ctx ends.
func (g *Group[T]) RunTx(ctx context.Context, h TxHandler[T]) error {
	if h == nil {
		return fmt.Errorf("%w: nil handler", ErrInvalidConfig)
	}
	return g.run(ctx, func(c *Consumer[T], ctx context.Context) error { return c.RunTx(ctx, h) })
}

// partRun is one partition's Consumer and the goroutine running it.
type partRun struct {
	stop func(ctx context.Context) error
	done chan struct{}
}

func (g *Group[T]) run(ctx context.Context, runFn func(*Consumer[T], context.Context) error) error {
	cfg := &g.cfg
	log := cfg.Logger
	if log == nil {
		log = slog.Default()
	}
	n := cfg.Partitions.Count
	runs := map[int]*partRun{}
	var wg sync.WaitGroup
	defer wg.Wait()
	start := func(i int) {
		c, err := NewWithStore(cfg.partitionConfig(i), g.store)
		if err != nil { // checked in NewGroup
			log.Error("consumer group: partition consumer", "partition", i, "err", err)
			return
		}
		pctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
		pr := &partRun{done: make(chan struct{})}
		pr.stop = func(sctx context.Context) error {
			defer cancel()
			return c.Close(sctx)
		}
		runs[i] = pr
		wg.Go(func() {
			defer close(pr.done)
			for {
				err := runFn(c, pctx)
				if err == nil || pctx.Err() != nil || errors.Is(err, ErrClosed) {
					return
				}
				log.Error("consumer group: partition run failed; restarting it", "partition", i, "err", err)
				if !sleepCtx(pctx, time.Second) {
					return
				}
			}
		})
	}
	stop := func(i int) {
		pr := runs[i]
		if pr == nil {
			return
		}
		delete(runs, i)
		// Bounded by half a lease: the other leases must be renewed in time.
		sctx, cancel := context.WithTimeout(context.Background(), min(cfg.drainTimeout(), cfg.LeaseTTL/2))
		defer cancel()
		if err := pr.stop(sctx); err != nil {
			log.Warn("consumer group: partition did not drain in time", "partition", i, "err", err)
		}
		<-pr.done
	}
	publish := func() {
		held := make([]int, 0, len(runs))
		for i := range runs {
			held = append(held, i)
		}
		slices.Sort(held)
		g.mu.Lock()
		changed := !slices.Equal(held, g.held)
		g.held = held
		g.mu.Unlock()
		if changed {
			log.Info("consumer group: partitions held", "group", cfg.Group, "member", cfg.Member, "partitions", held)
			if cfg.OnAssign != nil {
				cfg.OnAssign(slices.Clone(held))
			}
		}
	}
	stopAll := func() {
		for i := range runs {
			stop(i)
		}
		publish()
	}
	defer func() {
		stopAll()
		lctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := cfg.Leaser.Leave(lctx, cfg.Group, cfg.Member); err != nil {
			log.Warn("consumer group: leaving failed; the others take over when the leases expire", "err", err)
		}
	}()

	interval := cfg.LeaseTTL / 5
	t := time.NewTicker(interval)
	defer t.Stop()
	var validUntil time.Time // the leases in runs are ours until then
	for {
		lctx, cancel := context.WithTimeout(ctx, interval)
		asked := time.Now()
		held, share, err := cfg.Leaser.Renew(lctx, cfg.Group, cfg.Member, n, cfg.LeaseTTL)
		if err == nil {
			validUntil = asked.Add(cfg.LeaseTTL)
			mine := map[int]bool{}
			for _, i := range held {
				mine[i] = true
			}
			for i := range runs { // lost (expired and taken) leases: stop at once
				if !mine[i] {
					log.Warn("consumer group: lease lost; stopping the partition", "partition", i)
					stop(i)
				}
			}
			var give []int
			for _, i := range held { // held but not running (after a restart of this process)
				if runs[i] != nil {
					continue
				}
				if len(runs) < share {
					start(i)
				} else {
					give = append(give, i)
				}
			}
			if extra := len(runs) - share; extra > 0 { // give back the highest partitions
				var mineRunning []int
				for i := range runs {
					mineRunning = append(mineRunning, i)
				}
				slices.Sort(mineRunning)
				for _, i := range mineRunning[len(mineRunning)-extra:] {
					stop(i) // drained before the lease goes: the next holder starts after our acks
					give = append(give, i)
				}
			}
			if len(give) > 0 {
				if err := cfg.Leaser.Release(lctx, cfg.Group, cfg.Member, give); err != nil {
					log.Warn("consumer group: release failed; the leases expire instead", "err", err)
				}
			}
			if want := share - len(runs); want > 0 {
				got, err := cfg.Leaser.Acquire(lctx, cfg.Group, cfg.Member, n, want, cfg.LeaseTTL)
				if err != nil {
					log.Warn("consumer group: acquire failed", "err", err)
				}
				for _, i := range got {
					if runs[i] == nil {
						start(i)
					}
				}
			}
		} else if ctx.Err() == nil {
			log.Warn("consumer group: renewing the leases failed", "err", err, "valid_until", validUntil)
			if len(runs) > 0 && time.Now().After(validUntil.Add(-interval)) {
				// Another member may take them any moment: stop before it does.
				log.Error("consumer group: leases expiring without renewal; stopping every partition", "partitions", len(runs))
				stopAll()
			}
		}
		cancel()
		publish()
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

func (c *Config) drainTimeout() time.Duration {
	if c.DrainTimeout > 0 {
		return c.DrainTimeout
	}
	return DefaultDrainTimeout
}
