package pgoutbox_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/rabbitkit/rabbitkit/internal/testbroker"
	"github.com/rabbitkit/rabbitkit/internal/testutil"
	"github.com/rabbitkit/rabbitkit/metrics"
	"github.com/rabbitkit/rabbitkit/protocol"
	"github.com/rabbitkit/rabbitkit/publisher"
	"github.com/rabbitkit/rabbitkit/publisher/pgoutbox"
)

// deleteCutter takes the relay's database away (proxy down for a moment) when a DELETE of
// confirmed rows starts, and counts the DELETEs that failed.
type deleteCutter struct {
	px     *testbroker.Proxy
	t      testing.TB
	seen   atomic.Int32
	cuts   atomic.Int32
	max    int32
	failed atomic.Int32
	wg     sync.WaitGroup
}

func isConfirmedDelete(sql string) bool {
	return strings.HasPrefix(strings.TrimSpace(sql), "DELETE FROM") && strings.Contains(sql, "rid = ANY")
}

func (dc *deleteCutter) TraceQueryStart(ctx context.Context, _ *pgx.Conn, d pgx.TraceQueryStartData) context.Context {
	if !isConfirmedDelete(d.SQL) {
		return ctx
	}
	ctx = context.WithValue(ctx, confirmedDelete{}, true)
	if dc.seen.Add(1)%2 == 1 && dc.cuts.Add(1) <= dc.max { // every other DELETE
		dc.px.Down(dc.t)
		dc.wg.Add(1)
		go func() {
			defer dc.wg.Done()
			time.Sleep(time.Duration(100+rand.IntN(300)) * time.Millisecond)
			dc.px.Up(dc.t)
		}()
	}
	return ctx
}

type confirmedDelete struct{}

func (dc *deleteCutter) TraceQueryEnd(ctx context.Context, _ *pgx.Conn, d pgx.TraceQueryEndData) {
	if d.Err != nil && ctx.Value(confirmedDelete{}) != nil {
		dc.failed.Add(1)
	}
}

// gaugeRecorder keeps the last and the highest value of one gauge.
type gaugeRecorder struct {
	name string

	mu         sync.Mutex
	last, peak float64
}

func (g *gaugeRecorder) Add(string, float64, ...metrics.Label) {}
func (g *gaugeRecorder) Set(name string, v float64, _ ...metrics.Label) {
	if name != g.name {
		return
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	g.last, g.peak = v, max(g.peak, v)
}
func (g *gaugeRecorder) Observe(string, float64, ...metrics.Label) {}
func (g *gaugeRecorder) get() (last, peak float64) {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.last, g.peak
}

// The relay's database connection is cut while it deletes confirmed rows: the deleter retries
// until every row is gone, the relay keeps sending meanwhile, nothing is lost, and no confirmed
// row is sent a second time (the relay's connection to the broker never dropped).
func TestDeleteRetriedThroughCuts(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t, 8)
	px := testbroker.NewTCPProxy(t, pgHost(t, e.dsn))
	dc := &deleteCutter{px: px, t: t, max: 12}
	pcfg, err := pgxpool.ParseConfig(pgURLVia(t, e.dsn, px.Addr))
	if err != nil {
		t.Fatal(err)
	}
	pcfg.MaxConns = 4
	pcfg.ConnConfig.Tracer = dc
	relayPool, err := pgxpool.NewWithConfig(ctx, pcfg)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { dc.wg.Wait(); relayPool.Close() }()
	writer := open(t, e.pool, pgoutbox.Options{})
	g := &gaugeRecorder{name: pgoutbox.MetricDeletesPending}
	relayOB := open(t, relayPool, pgoutbox.Options{LeaseTTL: 10 * time.Second, Metrics: g})
	c := collect(t, e.url, e.queue)
	m := &countingRecorder{}
	cfg := e.relayConfig(t, m)
	cfg.RetryBackoff = func() backoffT { return testutil.FastBackoff() }
	stop := runRelay(t, relayOB, cfg)

	const writers, each = 4, 100
	var wg sync.WaitGroup
	for w := range writers {
		wg.Go(func() {
			for i := range each {
				msg := e.msg(fmt.Sprintf("s%d", (w*each+i)%8), fmt.Sprintf("w%d-%d", w, i))
				if _, err := publishOrder(ctx, e.pool, writer, msg, true, 0); err != nil {
					t.Errorf("publish: %v", err)
					return
				}
				time.Sleep(time.Duration(rand.IntN(8)) * time.Millisecond)
			}
		})
	}
	wg.Wait()
	c.waitDistinct(t, writers*each, 60*time.Second)
	deadline := time.Now().Add(30 * time.Second)
	var left int
	for {
		if err := e.pool.QueryRow(ctx, `SELECT count(*) FROM rabbitkit_outbox`).Scan(&left); err != nil {
			t.Fatal(err)
		}
		if left == 0 || time.Now().After(deadline) {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	stop()
	if left != 0 {
		t.Errorf("%d confirmed rows never deleted", left)
	}
	if dc.failed.Load() == 0 || dc.cuts.Load() == 0 {
		t.Errorf("no DELETE failed (cuts %d): the test did not test anything", dc.cuts.Load())
	}
	if last, peak := g.get(); last != 0 || peak == 0 {
		t.Errorf("%s: last %v (want 0: every row deleted), peak %v (want > 0: DELETEs failed)", pgoutbox.MetricDeletesPending, last, peak)
	}
	gs := c.snapshot()
	checkOrder(t, gs)
	if dup := len(gs) - c.distinct(); dup != 0 || m.get(publisher.MetricResent) != 0 {
		t.Errorf("%d duplicate deliveries, %v resent: a confirmed row was sent again", dup, m.get(publisher.MetricResent))
	}
	t.Logf("%d messages, %d cuts during DELETE, %d DELETEs failed (and were retried)", len(gs), min(dc.cuts.Load(), dc.max), dc.failed.Load())
}

// downOnDelete takes the database away for good at the first DELETE of confirmed rows.
type downOnDelete struct {
	px   *testbroker.Proxy
	t    testing.TB
	done atomic.Bool
}

func (d *downOnDelete) TraceQueryStart(ctx context.Context, _ *pgx.Conn, q pgx.TraceQueryStartData) context.Context {
	if isConfirmedDelete(q.SQL) && d.done.CompareAndSwap(false, true) {
		d.px.Down(d.t)
	}
	return ctx
}

func (d *downOnDelete) TraceQueryEnd(context.Context, *pgx.Conn, pgx.TraceQueryEndData) {}

// The relay stops while the delete of confirmed rows cannot reach the database: the rows stay,
// and the next relay sends them again with their original stamps, which a consumer drops as
// duplicates (the documented outcome of a delete that never committed).
func TestUndeletedRowsResentWithTheirStamps(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t, 6)
	px := testbroker.NewTCPProxy(t, pgHost(t, e.dsn))
	dd := &downOnDelete{px: px, t: t}
	pcfg, err := pgxpool.ParseConfig(pgURLVia(t, e.dsn, px.Addr))
	if err != nil {
		t.Fatal(err)
	}
	pcfg.MaxConns = 4
	pcfg.ConnConfig.Tracer = dd
	relayPool, err := pgxpool.NewWithConfig(ctx, pcfg)
	if err != nil {
		t.Fatal(err)
	}
	defer relayPool.Close()
	writer := open(t, e.pool, pgoutbox.Options{})
	relayOB := open(t, relayPool, pgoutbox.Options{LeaseTTL: 3 * time.Second})
	c := collect(t, e.url, e.queue)
	for i := range 5 {
		if _, err := publishOrder(ctx, e.pool, writer, e.msg("orders", fmt.Sprintf("m%d", i)), true, 0); err != nil {
			t.Fatal(err)
		}
	}
	stop := runRelay(t, relayOB, e.relayConfig(t, nil))
	c.waitDistinct(t, 5, 15*time.Second)
	deadline := time.Now().Add(10 * time.Second)
	for !dd.done.Load() && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	stop() // the deleter gives up after its bound: the rows stay
	px.Up(t)
	var left int
	if err := e.pool.QueryRow(ctx, `SELECT count(*) FROM rabbitkit_outbox`).Scan(&left); err != nil {
		t.Fatal(err)
	}
	if left == 0 {
		t.Skip("the rows were deleted before the cut took effect")
	}
	first := c.snapshot()
	// A new relay (the lease was not released: it takes it at expiry) resends what is left.
	runRelay(t, open(t, e.pool, pgoutbox.Options{LeaseTTL: 3 * time.Second}), e.relayConfig(t, nil))
	deadline = time.Now().Add(20 * time.Second)
	for len(c.snapshot()) < len(first)+left && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	all := c.snapshot()
	if len(all) < len(first)+left {
		t.Fatalf("%d deliveries after the restart, want %d resent", len(all)-len(first), left)
	}
	byBody := map[string]protocol.Stamp{}
	for _, g := range first {
		byBody[g.body] = g.stamp
	}
	for _, g := range all[len(first):] {
		if st, ok := byBody[g.body]; !ok || st != g.stamp {
			t.Fatalf("resent %q with stamp %v, first sent with %v: a consumer could not drop it", g.body, g.stamp, st)
		}
	}
	if c.distinct() != 5 {
		t.Fatalf("%d distinct stamps, want 5", c.distinct())
	}
}
