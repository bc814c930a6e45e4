package pgoutbox_test

import (
	"context"
	"io"
	"log/slog"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/cenkalti/backoff/v4"
	"github.com/jackc/pgx/v5/pgxpool"
	amqp "github.com/rabbitmq/amqp091-go"
	"go.uber.org/goleak"

	"github.com/rabbitkit/rabbitkit/internal/pgtest"
	"github.com/rabbitkit/rabbitkit/internal/testbroker"
	"github.com/rabbitkit/rabbitkit/metrics"
	"github.com/rabbitkit/rabbitkit/protocol"
	"github.com/rabbitkit/rabbitkit/publisher"
	"github.com/rabbitkit/rabbitkit/publisher/pgoutbox"
	"github.com/rabbitkit/rabbitkit/topology"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m, append(testbroker.IgnoreProxyLeaks(),
		goleak.IgnoreAnyFunction("github.com/jackc/pgx/v5/pgxpool.(*Pool).backgroundHealthCheck"),
	)...)
}

func quiet(t testing.TB) *slog.Logger {
	if os.Getenv("RABBITKIT_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug})).With("test", t.Name())
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

// env is a fresh database with a business table, and a fresh queue on the shared broker.
type env struct {
	url   string
	dsn   string
	pool  *pgxpool.Pool
	queue string
}

func newEnv(t *testing.T, conns int32) *env {
	t.Helper()
	url := testbroker.SharedURL(t)
	dsn := pgtest.DSN(t)
	pool := pgtest.PoolOn(t, dsn, conns)
	if _, err := pool.Exec(context.Background(), `CREATE TABLE orders (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, note text NOT NULL)`); err != nil {
		t.Fatal(err)
	}
	q := testbroker.Name(t, "pgoutbox")
	testbroker.DeleteQueues(t, url, q)
	return &env{url: url, dsn: dsn, pool: pool, queue: q}
}

func (e *env) topo() topology.Topology {
	return topology.Topology{Queues: []topology.Queue{{Name: e.queue}}}
}

func (e *env) msg(stream, body string) publisher.Message {
	return publisher.Message{RoutingKey: e.queue, Stream: stream, Body: []byte(body)}
}

func (e *env) relayConfig(t testing.TB, m *countingRecorder) publisher.Config {
	cfg := publisher.Config{URLs: []string{e.url}, Topology: e.topo(), Logger: quiet(t), MaxInFlight: 64}
	if m != nil {
		cfg.Metrics = m
	}
	return cfg
}

func open(t testing.TB, pool *pgxpool.Pool, opts pgoutbox.Options) *pgoutbox.Outbox {
	t.Helper()
	if opts.Source == "" {
		opts.Source = "orders-svc"
	}
	if opts.Logger == nil {
		opts.Logger = quiet(t)
	}
	o, err := pgoutbox.Open(context.Background(), pool, opts)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	return o
}

// runRelay runs o.Relay until the test ends (or stop is called).
func runRelay(t testing.TB, o *pgoutbox.Outbox, cfg publisher.Config) (stop func()) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- o.Relay(ctx, cfg) }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			select {
			case err := <-done:
				if err != nil {
					t.Errorf("Relay: %v", err)
				}
			case <-time.After(20 * time.Second):
				t.Errorf("Relay did not return")
			}
		})
	}
	t.Cleanup(stop)
	return stop
}

// got is one delivery seen by the collector.
type got struct {
	stamp protocol.Stamp
	body  string
	at    time.Time
}

// collector consumes the queue on its own connection and keeps every delivery in order.
type collector struct {
	mu   sync.Mutex
	all  []got
	conn *amqp.Connection
	done chan struct{}
}

func collect(t testing.TB, url, queue string) *collector {
	t.Helper()
	conn, err := amqp.Dial(url)
	if err != nil {
		t.Fatal(err)
	}
	ch, err := conn.Channel()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ch.QueueDeclare(queue, true, false, false, false, nil); err != nil {
		t.Fatal(err)
	}
	ds, err := ch.Consume(queue, "", true, false, false, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	c := &collector{conn: conn, done: make(chan struct{})}
	go func() {
		defer close(c.done)
		for d := range ds {
			st, err := protocol.ParseMessageID(d.MessageId)
			if err != nil {
				t.Errorf("message-id %q: %v", d.MessageId, err)
				continue
			}
			c.mu.Lock()
			c.all = append(c.all, got{stamp: st, body: string(d.Body), at: time.Now()})
			c.mu.Unlock()
		}
	}()
	t.Cleanup(c.close)
	return c
}

func (c *collector) close() {
	_ = c.conn.Close()
	<-c.done
}

func (c *collector) snapshot() []got {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]got(nil), c.all...)
}

// arrivals is the first arrival time of each body.
func (c *collector) arrivals() map[string]time.Time {
	out := map[string]time.Time{}
	for _, g := range c.snapshot() {
		if _, ok := out[g.body]; !ok {
			out[g.body] = g.at
		}
	}
	return out
}

// distinct is the number of distinct stamps seen.
func (c *collector) distinct() int {
	seen := map[protocol.Stamp]bool{}
	for _, g := range c.snapshot() {
		seen[g.stamp] = true
	}
	return len(seen)
}

func (c *collector) waitDistinct(t testing.TB, n int, d time.Duration) {
	t.Helper()
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) {
		if c.distinct() >= n {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("%d distinct messages after %v, want %d", c.distinct(), d, n)
}

// checkOrder verifies that per (epoch, stream) the first arrivals are 1, 2, 3, … with none
// skipped, that a stamp always carries the same body, and returns the first arrivals per stream.
func checkOrder(t testing.TB, gs []got) map[string][]got {
	t.Helper()
	body := map[protocol.Stamp]string{}
	next := map[string]int64{}
	firsts := map[string][]got{}
	for _, g := range gs {
		if b, ok := body[g.stamp]; ok {
			if b != g.body {
				t.Errorf("stamp %v carried %q and %q", g.stamp, b, g.body)
			}
			continue // a duplicate: the same stamp, which a consumer drops
		}
		body[g.stamp] = g.body
		k := g.stamp.Stream
		if g.stamp.Seq != next[k]+1 {
			t.Errorf("stream %s: first arrival of seq %d after %d", k, g.stamp.Seq, next[k])
		}
		next[k] = max(next[k], g.stamp.Seq)
		firsts[k] = append(firsts[k], g)
	}
	return firsts
}

// countingRecorder counts the publisher metrics of one relay.
type countingRecorder struct {
	mu sync.Mutex
	v  map[string]float64
}

func (r *countingRecorder) Add(name string, d float64, _ ...metrics.Label) {
	r.mu.Lock()
	if r.v == nil {
		r.v = map[string]float64{}
	}
	r.v[name] += d
	r.mu.Unlock()
}
func (r *countingRecorder) Set(string, float64, ...metrics.Label)     {}
func (r *countingRecorder) Observe(string, float64, ...metrics.Label) {}
func (r *countingRecorder) get(name string) float64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.v[name]
}

type backoffT = backoff.BackOff
