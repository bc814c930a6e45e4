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
	relayOB := open(t, relayPool, pgoutbox.Options{LeaseTTL: 10 * time.Second})
	c := collect(t, e.url, e.queue)
	m := &countingRecorder{}
	cfg := e.relayConfig(t, m)
	cfg.RetryBackoff = func() backoffT { return fastBO() }
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
	gs := c.snapshot()
	checkOrder(t, gs)
	if dup := len(gs) - c.distinct(); dup != 0 || m.get(publisher.MetricResent) != 0 {
		t.Errorf("%d duplicate deliveries, %v resent: a confirmed row was sent again", dup, m.get(publisher.MetricResent))
	}
	t.Logf("%d messages, %d cuts during DELETE, %d DELETEs failed (and were retried)", len(gs), min(dc.cuts.Load(), dc.max), dc.failed.Load())
}
