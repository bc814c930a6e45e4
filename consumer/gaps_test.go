package consumer_test

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	bolt "go.etcd.io/bbolt"

	"github.com/rabbitkit/rabbitkit/consumer"
	"github.com/rabbitkit/rabbitkit/consumer/dedup"
	"github.com/rabbitkit/rabbitkit/internal/testbroker"
	"github.com/rabbitkit/rabbitkit/internal/testutil"
)

type eventLog struct {
	mu  sync.Mutex
	evs []dedup.Event
}

func (l *eventLog) add(ev dedup.Event) { l.mu.Lock(); l.evs = append(l.evs, ev); l.mu.Unlock() }

func (l *eventLog) kinds() map[dedup.EventKind][]dedup.Event {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := map[dedup.EventKind][]dedup.Event{}
	for _, ev := range l.evs {
		out[ev.Kind] = append(out[ev.Kind], ev)
	}
	return out
}

// A missing message is reported as a gap (source, stream, epoch, range) after the grace period;
// when it turns up it is handled once and reported late; a new epoch is reported; the dedup state
// survives a restart of the consumer (redeliveries of everything are dropped, no gap is reported
// twice).
func TestGapLateEpochAndRestart(t *testing.T) {
	f := newFixture(t, testbroker.SharedURL(t))
	ch := f.channel()
	f.publish(ch, stamped("src", "s", 1, 1, "x"), stamped("src", "s", 1, 2, "x"),
		stamped("src", "s", 1, 5, "x"), stamped("src", "s", 1, 6, "x"))
	var log eventLog
	newConsumer := func() *consumer.Consumer[*bolt.Tx] {
		cfg := f.config()
		cfg.Dedup.GapGrace = 200 * time.Millisecond
		cfg.OnGap, cfg.OnLate, cfg.OnEpoch = log.add, log.add, log.add
		c, err := consumer.New(cfg)
		require.NoError(t, err)
		return c
	}
	tx := func(_ context.Context, tx *bolt.Tx, m *consumer.Message) error { return countEffect(tx, m) }
	c := newConsumer()
	run := start(t, c, nil, tx)
	testutil.Eventually(t, 10*time.Second, "gap reported", func() bool { return len(log.kinds()[dedup.EventGapDetected]) == 1 })
	gap := log.kinds()[dedup.EventGapDetected][0]
	require.Equal(t, dedup.Key{Source: "src", Stream: "s"}, gap.Key)
	require.Equal(t, int64(1), gap.Epoch)
	require.Equal(t, [2]int64{3, 4}, [2]int64{gap.From, gap.To})
	require.Equal(t, 1.0, f.mem.Get(consumer.MetricGaps))

	f.publish(ch, stamped("src", "s", 1, 4, "x"))
	testutil.Eventually(t, 10*time.Second, "late arrival", func() bool { return len(log.kinds()[dedup.EventLateArrival]) == 1 })
	require.Equal(t, int64(4), log.kinds()[dedup.EventLateArrival][0].From)

	f.publish(ch, stamped("src", "s", 2, 1, "x"))
	testutil.Eventually(t, 10*time.Second, "epoch change", func() bool { return len(log.kinds()[dedup.EventEpochChanged]) == 1 })
	ev := log.kinds()[dedup.EventEpochChanged][0]
	require.Equal(t, [2]int64{1, 2}, [2]int64{ev.OldEpoch, ev.Epoch})
	run.stop(t)
	require.NoError(t, c.Close(context.Background()))

	// Restart on the same file: everything redelivered is a duplicate, seq 3 is still missing and
	// already reported (no second report), and it is handled once when it finally comes.
	f.publish(ch, stamped("src", "s", 1, 1, "x"), stamped("src", "s", 1, 2, "x"), stamped("src", "s", 1, 4, "x"),
		stamped("src", "s", 1, 5, "x"), stamped("src", "s", 1, 6, "x"), stamped("src", "s", 2, 1, "x"))
	c = newConsumer()
	run = start(t, c, nil, tx)
	testutil.Eventually(t, 10*time.Second, "duplicates dropped", func() bool { return f.mem.Get(consumer.MetricDuplicates) == 6 })
	f.publish(ch, stamped("src", "s", 1, 3, "x"))
	testutil.Eventually(t, 10*time.Second, "late arrival of 3", func() bool { return len(log.kinds()[dedup.EventLateArrival]) == 2 })
	time.Sleep(400 * time.Millisecond)
	run.stop(t)
	require.Len(t, log.kinds()[dedup.EventGapDetected], 1, "the gap is not reported again after a restart")
	require.NoError(t, c.Close(context.Background()))
	db, err := bolt.Open(f.path, 0o600, &bolt.Options{Timeout: time.Second, ReadOnly: true})
	require.NoError(t, err)
	defer db.Close()
	requireExactlyOnce(t, effects(t, db), append(seqKeys("src", "s", 1, 1, 6), key("src", "s", 2, 1)))
}

// When Run's context ends, the running handler finishes, its message is committed and acked, and
// the deliveries not started stay in the queue for the next consumer; nothing is applied twice.
func TestDrainLetsRunningHandlerFinish(t *testing.T) {
	f := newFixture(t, testbroker.SharedURL(t))
	ch := f.channel()
	want := publishStreams(f, ch, []string{"a"}, 1, 10)
	var cnt counter
	started := make(chan struct{}, 10)
	slow := func(ctx context.Context, m *consumer.Message) error {
		started <- struct{}{}
		time.Sleep(300 * time.Millisecond)
		cnt.add(m)
		return nil
	}
	c, err := consumer.New(f.config())
	require.NoError(t, err)
	run := start(t, c, slow, nil)
	<-started
	t0 := time.Now()
	run.stop(t)
	require.Less(t, time.Since(t0), 3*time.Second, "drain waits for the running handler only")
	require.NoError(t, c.Close(context.Background()))
	n := len(cnt.snapshot())
	require.GreaterOrEqual(t, n, 1, "the running handler finished")
	testutil.Eventually(t, 10*time.Second, "unhandled deliveries back in the queue", func() bool { return f.messages(ch, f.queue) == 10-n })

	c, err = consumer.New(f.config())
	require.NoError(t, err)
	run = start(t, c, func(_ context.Context, m *consumer.Message) error { cnt.add(m); return nil }, nil)
	testutil.Eventually(t, 10*time.Second, "the rest", func() bool { return len(cnt.snapshot()) == 10 })
	run.stop(t)
	requireExactlyOnce(t, cnt.snapshot(), want)
}

// failingStore fails every commit after the first few, like a full disk.
type failingStore struct {
	*consumer.BoltStore
	left atomic.Int32
}

func (s *failingStore) Commit(ctx context.Context, b *consumer.Batch[*bolt.Tx]) error {
	if s.left.Add(-1) < 0 {
		return errors.New("disk full")
	}
	return s.BoltStore.Commit(ctx, b)
}

// When the store fails, Run stops and returns an error wrapping ErrStore; nothing uncommitted was
// acked, so a new Run handles the rest, each message exactly once.
func TestStoreFailureStopsRun(t *testing.T) {
	f := newFixture(t, testbroker.SharedURL(t))
	ch := f.channel()
	want := publishStreams(f, ch, []string{"a", "b"}, 1, 50)
	bs, err := consumer.OpenBoltStore(f.path, consumer.BoltOptions{})
	require.NoError(t, err)
	fs := &failingStore{BoltStore: bs}
	fs.left.Store(3)
	cfg := f.config()
	cfg.StorePath, cfg.MaxBatch = "", 5
	c, err := consumer.NewWithStore(cfg, fs)
	require.NoError(t, err)
	tx := func(_ context.Context, tx *bolt.Tx, m *consumer.Message) error { return countEffect(tx, m) }
	err = c.RunTx(context.Background(), tx)
	require.ErrorIs(t, err, consumer.ErrStore)
	require.ErrorContains(t, err, "disk full")
	committed := len(effectsOf(t, c))
	require.Positive(t, committed)
	require.Less(t, committed, 100)
	testutil.Eventually(t, 10*time.Second, "uncommitted deliveries back in the queue", func() bool {
		return f.messages(ch, f.queue) == 100-committed
	})

	fs.left.Store(1 << 30) // the disk has room again
	run := start(t, c, nil, tx)
	testutil.Eventually(t, 20*time.Second, "the rest", func() bool { return len(effectsOf(t, c)) == 100 })
	run.stop(t)
	requireExactlyOnce(t, effectsOf(t, c), want)
	require.NoError(t, bs.Close())
}

// A handler that does not finish within DrainTimeout gets its context cancelled; Run returns, and
// its message, not acked, is redelivered to the next Run.
func TestDrainTimeoutCancelsHandler(t *testing.T) {
	f := newFixture(t, testbroker.SharedURL(t))
	ch := f.channel()
	f.publish(ch, stamped("src", "s", 1, 1, "x"))
	cfg := f.config()
	cfg.DrainTimeout = 300 * time.Millisecond
	c, err := consumer.New(cfg)
	require.NoError(t, err)
	started := make(chan struct{}, 1)
	run := start(t, c, func(ctx context.Context, m *consumer.Message) error {
		started <- struct{}{}
		<-ctx.Done()
		return ctx.Err()
	}, nil)
	<-started
	t0 := time.Now()
	run.stop(t)
	require.Less(t, time.Since(t0), 5*time.Second)
	require.Zero(t, f.mem.Get(consumer.MetricParked), "a handler cut short by the drain is not parked")
	testutil.Eventually(t, 10*time.Second, "message back in the queue", func() bool { return f.messages(ch, f.queue) == 1 })

	var cnt counter
	run = start(t, c, func(_ context.Context, m *consumer.Message) error { cnt.add(m); return nil }, nil)
	testutil.Eventually(t, 10*time.Second, "handled by the next Run", func() bool { return len(cnt.snapshot()) == 1 })
	run.stop(t)
	requireExactlyOnce(t, cnt.snapshot(), []string{key("src", "s", 1, 1)})
}

// With several workers, each stream's messages are handled one at a time, in order.
func TestWorkersKeepPerStreamOrder(t *testing.T) {
	f := newFixture(t, testbroker.SharedURL(t))
	ch := f.channel()
	streams := []string{"a", "b", "c", "d", "e"}
	want := publishStreams(f, ch, streams, 1, 200)
	cfg := f.config()
	cfg.Workers = 4
	c, err := consumer.New(cfg)
	require.NoError(t, err)
	var mu sync.Mutex
	seen := map[string][]int64{}
	busy := map[string]bool{}
	var overlap atomic.Bool
	var cnt counter
	run := start(t, c, func(_ context.Context, m *consumer.Message) error {
		mu.Lock()
		if busy[m.Stamp.Stream] {
			overlap.Store(true)
		}
		busy[m.Stamp.Stream] = true
		seen[m.Stamp.Stream] = append(seen[m.Stamp.Stream], m.Stamp.Seq)
		mu.Unlock()
		time.Sleep(100 * time.Microsecond)
		mu.Lock()
		busy[m.Stamp.Stream] = false
		mu.Unlock()
		cnt.add(m)
		return nil
	}, nil)
	testutil.Eventually(t, 30*time.Second, "all effects", func() bool { return len(cnt.snapshot()) == len(want) })
	run.stop(t)
	requireExactlyOnce(t, cnt.snapshot(), want)
	require.False(t, overlap.Load(), "two messages of one stream ran at once")
	for _, s := range streams {
		for i, seq := range seen[s] {
			require.Equal(t, int64(i+1), seq, "stream %s out of order", s)
		}
	}
}
