package consumer_test

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cenkalti/backoff/v4"
	"github.com/stretchr/testify/require"

	"github.com/rabbitkit/rabbitkit/consumer"
	"github.com/rabbitkit/rabbitkit/consumer/dedup"
	"github.com/rabbitkit/rabbitkit/internal/testbroker"
	"github.com/rabbitkit/rabbitkit/internal/testutil"
	"github.com/rabbitkit/rabbitkit/metrics"
	"github.com/rabbitkit/rabbitkit/protocol"
)

// memShared is an in-memory ScopeShared store, a stand-in for a database shared by replicas: it
// takes the dedup decision inside Commit, under its lock, against the state as committed, as
// consumer/pginbox does under its row locks. Tests inject faults with before (an error before
// anything is applied) and after (an error after the batch was committed: an unknown outcome).
type memShared struct {
	cfg dedup.Config

	mu      sync.Mutex
	states  map[dedup.Key][]byte
	effects map[string]int
	commits int
	before  func(n int) error // n: the commit's number, from 1
	after   func(n int) error
}

// memTx is memShared's transaction: effects applied only if the commit succeeds.
type memTx struct{ effects map[string]int }

var _ consumer.Store[*memTx] = (*memShared)(nil)
var _ consumer.SharedStore = (*memShared)(nil)

func newMemShared(cfg dedup.Config) *memShared {
	return &memShared{cfg: cfg, states: map[dedup.Key][]byte{}, effects: map[string]int{}}
}

func (s *memShared) Claim(context.Context) (func(), error) { return func() {}, nil }
func (s *memShared) Scope() consumer.Scope                 { return consumer.ScopeShared }
func (s *memShared) DedupConfig() dedup.Config             { return s.cfg }
func (s *memShared) Close() error                          { return nil }

func (s *memShared) Load(context.Context) ([]consumer.StreamState, error) {
	return s.Peek(context.Background(), nil)
}

func (s *memShared) Peek(_ context.Context, keys []dedup.Key) ([]consumer.StreamState, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []consumer.StreamState
	for k, v := range s.states {
		if keys == nil || containsKey(keys, k) {
			out = append(out, consumer.StreamState{Key: k, State: v})
		}
	}
	return out, nil
}

func containsKey(keys []dedup.Key, k dedup.Key) bool {
	for _, x := range keys {
		if x == k {
			return true
		}
	}
	return false
}

func (s *memShared) View(_ context.Context, fn func(tx *memTx) error) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return fn(&memTx{effects: maps.Clone(s.effects)})
}

func (s *memShared) Commit(_ context.Context, b *consumer.Batch[*memTx]) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.commits++
	n := s.commits
	if s.before != nil {
		if err := s.before(n); err != nil {
			return err
		}
	}
	now := time.Now()
	for {
		tr, err := dedup.New(s.cfg)
		if err != nil {
			return err
		}
		for k, v := range s.states {
			if err := tr.Load(k, v); err != nil {
				return err
			}
		}
		tx := &memTx{effects: maps.Clone(s.effects)}
		var evs []dedup.Event
		failed := false
		for i := range b.Ops {
			op := &b.Ops[i]
			if op.Err != nil {
				continue
			}
			run := op.Effect != nil
			if op.Mark {
				op.Verdict = tr.Classify(op.Stamp)
				run = run && op.Verdict.Kind == dedup.KindNew
			}
			if run {
				if err := op.Effect(tx); err != nil {
					op.Err = err
					for j := i + 1; j < len(b.Ops); j++ {
						if b.Ops[j].Key == op.Key && b.Ops[j].Err == nil {
							b.Ops[j].Err = fmt.Errorf("%w", consumer.ErrSkipped)
						}
					}
					failed = true
					break
				}
			}
			if op.Mark && op.Verdict.Kind == dedup.KindNew {
				_, e := tr.Commit(op.Stamp, op.Hash, now)
				evs = append(evs, e...)
			}
		}
		if failed {
			continue // rolled back: run again without the failed op
		}
		if !b.Expire.IsZero() {
			evs = append(evs, tr.Expire(b.Expire)...)
		}
		for _, k := range tr.TakeDirty(nil) {
			if st, ok := tr.AppendState(nil, k); ok {
				s.states[k] = st
			} else {
				delete(s.states, k)
			}
		}
		s.effects = tx.effects
		b.Events = evs
		if s.after != nil {
			return s.after(n)
		}
		return nil
	}
}

func (s *memShared) effectCounts() map[string]int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return maps.Clone(s.effects)
}

func memEffect(_ context.Context, tx *memTx, m *consumer.Message) error {
	tx.effects[effectKey(m)]++
	return nil
}

// gapLog records the gap events reported by all replicas.
type gapLog struct {
	mu  sync.Mutex
	evs []dedup.Event
}

func (g *gapLog) add(ev dedup.Event) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.evs = append(g.evs, ev)
}

func (g *gapLog) get() []dedup.Event {
	g.mu.Lock()
	defer g.mu.Unlock()
	return append([]dedup.Event(nil), g.evs...)
}

// sharedReplica runs one Consumer[*memTx] on the fixture's queue until the test ends.
func sharedReplica(t *testing.T, f *fixture, store *memShared, gaps *gapLog, mem *metrics.Memory, plain consumer.Handler) (stop func()) {
	t.Helper()
	cfg := f.config()
	cfg.StorePath = ""
	cfg.Prefetch = 20
	cfg.MaxBatch = 10
	cfg.Metrics = mem
	cfg.StoreRetryBackoff = func() backoff.BackOff { return backoff.NewConstantBackOff(5 * time.Millisecond) }
	if gaps != nil {
		cfg.OnGap = gaps.add
	}
	c, err := consumer.NewWithStore(cfg, store)
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		if plain != nil {
			done <- c.Run(ctx, plain)
		} else {
			done <- c.RunTx(ctx, memEffect)
		}
	}()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			select {
			case err := <-done:
				require.NoError(t, err)
			case <-time.After(60 * time.Second):
				t.Error("Run did not return")
			}
			_ = c.Close(context.Background())
		})
	}
	t.Cleanup(stop)
	return stop
}

// Three replicas on one queue and one shared store: every effect exactly once although the
// replicas interleave each stream's messages and every message arrives twice; a seq handled by
// another replica is never a gap, and the one real gap is reported once, not once per replica.
// A cache-only decision (each replica's own window) would apply the second copies again.
func TestSharedCompetingConsumers(t *testing.T) {
	f := newFixture(t, testbroker.SharedURL(t))
	store := newMemShared(dedup.Config{GapGrace: 300 * time.Millisecond})
	gaps := &gapLog{}
	mems := []*metrics.Memory{{}, {}, {}}
	for i := range mems {
		sharedReplica(t, f, store, gaps, mems[i], nil)
	}
	ch := f.channel()
	var want []string
	for _, stream := range []string{"a", "b", "c"} {
		for seq := int64(1); seq <= 120; seq++ {
			if stream == "c" && seq == 60 {
				continue // the one real gap
			}
			want = append(want, key("src", stream, 1, seq))
			m := stamped("src", stream, 1, seq, fmt.Sprint(seq))
			f.publish(ch, m, m) // every message twice, back to back: two replicas may hold both
		}
	}
	testutil.Eventually(t, 60*time.Second, "every effect", func() bool { return len(store.effectCounts()) == len(want) })
	testutil.Eventually(t, 30*time.Second, "the gap report", func() bool { return len(gaps.get()) > 0 })
	time.Sleep(time.Second) // time for wrong extra reports
	requireExactlyOnce(t, store.effectCounts(), want)
	g := gaps.get()
	require.Len(t, g, 1, "one gap, reported once across the replicas: %v", g)
	require.Equal(t, dedup.EventGapDetected, g[0].Kind)
	require.Equal(t, int64(60), g[0].From)
	require.Equal(t, int64(60), g[0].To)
	var handled, dups, active int64
	for _, m := range mems {
		h := int64(m.Get(consumer.MetricHandled))
		handled += h
		dups += int64(m.Get(consumer.MetricDuplicates))
		if h > 0 {
			active++
		}
	}
	require.Equal(t, int64(len(want)), handled)
	require.Equal(t, int64(len(want)), dups)
	require.GreaterOrEqual(t, active, int64(2), "the messages were spread over the replicas")
}

// A store that is unavailable, or loses the connection while COMMIT is in flight after having
// committed, never costs a handler attempt, is retried with backoff, and leaves every effect
// exactly once: the commit of the same batch in a fresh transaction finds what had committed.
func TestSharedStoreUnavailable(t *testing.T) {
	f := newFixture(t, testbroker.SharedURL(t))
	store := newMemShared(dedup.Config{})
	var unknown, down atomic.Int64
	store.before = func(n int) error {
		if n%5 == 2 {
			down.Add(1)
			return fmt.Errorf("dial: connection refused: %w", consumer.ErrStoreUnavailable)
		}
		return nil
	}
	store.after = func(n int) error {
		if n%7 == 3 {
			unknown.Add(1)
			return fmt.Errorf("commit: %w: %w: connection reset", consumer.ErrStoreUnavailable, consumer.ErrCommitUnknown)
		}
		return nil
	}
	mem := &metrics.Memory{}
	stop := sharedReplica(t, f, store, nil, mem, nil)
	ch := f.channel()
	var want []string
	for seq := int64(1); seq <= 200; seq++ {
		want = append(want, key("src", "s", 1, seq))
		f.publish(ch, stamped("src", "s", 1, seq, "x"))
	}
	testutil.Eventually(t, 60*time.Second, "every effect", func() bool { return len(store.effectCounts()) == len(want) })
	// What an unknown commit had committed comes back from the retry as duplicates.
	testutil.Eventually(t, 10*time.Second, "every delivery settled", func() bool {
		return mem.Get(consumer.MetricHandled)+mem.Get(consumer.MetricDuplicates) == 200
	})
	require.Positive(t, mem.Get(consumer.MetricDuplicates))
	stop()
	require.Zero(t, f.messages(ch, f.queue), "every delivery was acked")
	requireExactlyOnce(t, store.effectCounts(), want)
	require.Positive(t, unknown.Load())
	require.Positive(t, down.Load())
	require.Equal(t, unknown.Load(), int64(mem.Get(consumer.MetricCommitUnknown)))
	require.Equal(t, unknown.Load()+down.Load(), int64(mem.Get(consumer.MetricStoreRetries)))
	require.Zero(t, int64(mem.Get(consumer.MetricHandlerErrors)), "an unavailable store is not a handler failure")
	require.Zero(t, int64(mem.Get(consumer.MetricParked)))
}

// A plain handler on a shared store: a redelivery of what another replica committed is known from
// the store (Peek) before the handler runs, so the handler does not run again.
func TestSharedPlainHandlerSkipsCommitted(t *testing.T) {
	f := newFixture(t, testbroker.SharedURL(t))
	store := newMemShared(dedup.Config{})
	var cnt counter
	mem := &metrics.Memory{}
	sharedReplica(t, f, store, nil, mem, func(_ context.Context, m *consumer.Message) error {
		cnt.add(m)
		return nil
	})
	ch := f.channel()
	want := seqKeys("src", "s", 1, 1, 50)
	for seq := int64(1); seq <= 50; seq++ {
		f.publish(ch, stamped("src", "s", 1, seq, "x"))
	}
	testutil.Eventually(t, 30*time.Second, "handled", func() bool { return int64(mem.Get(consumer.MetricHandled)) == 50 })
	// Another replica's commits of seqs 51..60, which this replica's cache has never seen.
	other := make([]consumer.Op[*memTx], 0, 10)
	for seq := int64(51); seq <= 60; seq++ {
		m := stamped("src", "s", 1, seq, "x")
		st, err := protocol.ParseMessageID(m.MessageId)
		require.NoError(t, err)
		other = append(other, consumer.Op[*memTx]{Key: dedup.KeyOf(st), Stamp: st, Mark: true})
	}
	require.NoError(t, store.Commit(context.Background(), &consumer.Batch[*memTx]{Ops: other}))
	for seq := int64(1); seq <= 60; seq++ { // all of them again
		f.publish(ch, stamped("src", "s", 1, seq, "x"))
	}
	testutil.Eventually(t, 30*time.Second, "duplicates dropped", func() bool { return int64(mem.Get(consumer.MetricDuplicates)) == 60 })
	requireExactlyOnce(t, cnt.snapshot(), want)
	require.Zero(t, int64(mem.Get(consumer.MetricRaced)))
}

func TestNewWithSharedStoreConfig(t *testing.T) {
	cfg := consumer.Config{URLs: []string{"amqp://127.0.0.1:1/"}, Queue: "q"}
	store := newMemShared(dedup.Config{GapGrace: time.Second})
	c, err := consumer.NewWithStore(cfg, store)
	require.NoError(t, err)
	require.NoError(t, c.Close(context.Background()))

	cfg.Dedup.GapGrace = time.Minute
	_, err = consumer.NewWithStore(cfg, store)
	require.ErrorIs(t, err, consumer.ErrInvalidConfig, "Config.Dedup with a shared store")

	_, err = consumer.NewWithStore(consumer.Config{URLs: cfg.URLs, Queue: "q"}, consumer.Store[*memTx](sharedNoPeek{store}))
	require.ErrorIs(t, err, consumer.ErrInvalidConfig, "a shared store without SharedStore")
	require.True(t, errors.Is(err, consumer.ErrInvalidConfig))
}

// sharedNoPeek hides memShared's SharedStore methods.
type sharedNoPeek struct{ s *memShared }

func (n sharedNoPeek) Claim(ctx context.Context) (func(), error) { return n.s.Claim(ctx) }
func (n sharedNoPeek) Scope() consumer.Scope                     { return consumer.ScopeShared }
func (n sharedNoPeek) Load(ctx context.Context) ([]consumer.StreamState, error) {
	return n.s.Load(ctx)
}
func (n sharedNoPeek) Commit(ctx context.Context, b *consumer.Batch[*memTx]) error {
	return n.s.Commit(ctx, b)
}
func (n sharedNoPeek) View(ctx context.Context, fn func(*memTx) error) error {
	return n.s.View(ctx, fn)
}
func (n sharedNoPeek) Close() error { return nil }

// A shared store that stays down longer than StoreOutageRequeue: the batch's deliveries are given
// back to the queue (not held until the broker's consumer_timeout), come back, and are applied
// exactly once when the store answers again.
func TestSharedStoreOutageRequeues(t *testing.T) {
	f := newFixture(t, testbroker.SharedURL(t))
	store := newMemShared(dedup.Config{})
	var down atomic.Bool
	down.Store(true)
	store.before = func(int) error {
		if down.Load() {
			return fmt.Errorf("dial: connection refused: %w", consumer.ErrStoreUnavailable)
		}
		return nil
	}
	mem := &metrics.Memory{}
	cfg := f.config()
	cfg.StorePath = ""
	cfg.Metrics = mem
	cfg.StoreOutageRequeue = 300 * time.Millisecond
	cfg.StoreRetryBackoff = func() backoff.BackOff { return backoff.NewConstantBackOff(20 * time.Millisecond) }
	c, err := consumer.NewWithStore(cfg, store)
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.RunTx(ctx, memEffect) }()
	defer func() { cancel(); require.NoError(t, <-done) }()
	ch := f.channel()
	want := seqKeys("src", "s", 1, 1, 20)
	for seq := int64(1); seq <= 20; seq++ {
		f.publish(ch, stamped("src", "s", 1, seq, "x"))
	}
	testutil.Eventually(t, 20*time.Second, "deliveries requeued", func() bool { return mem.Get(consumer.MetricRequeued) >= 20 })
	testutil.Eventually(t, 20*time.Second, "redelivered", func() bool { return mem.Get(consumer.MetricRedeliveries) > 0 })
	down.Store(false)
	testutil.Eventually(t, 30*time.Second, "every effect", func() bool { return len(store.effectCounts()) == len(want) })
	requireExactlyOnce(t, store.effectCounts(), want)
	require.Zero(t, mem.Get(consumer.MetricHandlerErrors))
}

// With a shared store the worker's cache holds one batch's streams at most: a consumer that has
// seen 300 streams does not keep them (the store has them; the next batch reloads what it needs).
func TestSharedCacheBounded(t *testing.T) {
	f := newFixture(t, testbroker.SharedURL(t))
	store := newMemShared(dedup.Config{})
	mem := &metrics.Memory{}
	sharedReplica(t, f, store, nil, mem, nil) // MaxBatch 10
	ch := f.channel()
	var want []string
	for s := range 300 {
		stream := fmt.Sprintf("customer-%d", s)
		want = append(want, key("src", stream, 1, 1))
		f.publish(ch, stamped("src", stream, 1, 1, "x"))
	}
	testutil.Eventually(t, 30*time.Second, "every effect", func() bool { return len(store.effectCounts()) == len(want) })
	requireExactlyOnce(t, store.effectCounts(), want)
	require.LessOrEqual(t, mem.Get(consumer.MetricStreams), 10.0, "streams cached beyond one batch")
}
