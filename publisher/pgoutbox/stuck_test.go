package pgoutbox_test

import (
	"context"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/rabbitkit/rabbitkit/internal/testbroker"
	"github.com/rabbitkit/rabbitkit/internal/testutil"
	"github.com/rabbitkit/rabbitkit/publisher/pgoutbox"
)

// holeInTx black-holes the proxy once, right after a statement of the relay's matching sql
// returned inside a transaction: the server then waits, idle in transaction, for a client whose
// bytes vanish, holding the locks that statement took.
type holeInTx struct {
	px     *testbroker.Proxy
	t      testing.TB
	match  func(sql string) bool
	armed  atomic.Bool
	holed  atomic.Bool
	holeAt atomic.Int64
}

type sqlKey struct{}

// sqlTracer hands each statement's SQL from its start hook to its end hook (pgx gives the SQL
// only at start) and black-holes h's proxy after the first armed match.
type sqlTracer struct{ h *holeInTx }

func (s *sqlTracer) TraceQueryStart(ctx context.Context, _ *pgx.Conn, d pgx.TraceQueryStartData) context.Context {
	return context.WithValue(ctx, sqlKey{}, d.SQL)
}

func (s *sqlTracer) TraceQueryEnd(ctx context.Context, _ *pgx.Conn, d pgx.TraceQueryEndData) {
	h := s.h
	q, _ := ctx.Value(sqlKey{}).(string)
	if d.Err == nil && h.armed.Load() && h.match(q) && h.holed.CompareAndSwap(false, true) {
		h.px.Blackhole(h.t)
		h.holeAt.Store(time.Now().UnixNano())
	}
}

// The holder's database link is black-holed in the middle of one of its transactions, after a
// statement that locked the outbox's meta row (a relay-id assignment, a lease renewal): the
// server keeps that transaction open, idle, for as long as the socket lives, which the proxy keeps
// alive. The other relay must still take over within the lease's bound: the holder's transactions
// carry idle_in_transaction_session_timeout, so the server ends the orphan and frees its locks
// before the lease can expire. (Before, the new holder's lease transaction waited on the meta row
// lock of the orphan forever: TestTwoRelaysTakeover's flake, when its black hole hit a Read.)
func TestTakeoverWhileHolderStuckInTransaction(t *testing.T) {
	for _, v := range []struct {
		name  string
		match func(string) bool
	}{
		{"read", func(q string) bool { return strings.Contains(q, "last_rid") && strings.Contains(q, "FOR UPDATE") }},
		{"lease", func(q string) bool { return strings.Contains(q, "_leases") && strings.Contains(q, "ON CONFLICT") }},
	} {
		t.Run(v.name, func(t *testing.T) {
			ctx := context.Background()
			e := newEnv(t, 6)
			px := testbroker.NewTCPProxy(t, pgHost(t, e.dsn))
			h := &holeInTx{px: px, t: t, match: v.match}
			pcfg, err := pgxpool.ParseConfig(pgURLVia(t, e.dsn, px.Addr))
			if err != nil {
				t.Fatal(err)
			}
			pcfg.MaxConns = 4
			pcfg.ConnConfig.Tracer = &sqlTracer{h: h}
			poolA, err := pgxpool.NewWithConfig(ctx, pcfg)
			if err != nil {
				t.Fatal(err)
			}
			ttl := 2 * time.Second
			oa := open(t, poolA, pgoutbox.Options{LeaseTTL: ttl, Owner: "A", PollInterval: 20 * time.Millisecond})
			ob := open(t, e.pool, pgoutbox.Options{LeaseTTL: ttl, Owner: "B"})
			c := collect(t, e.url, e.queue)
			stopA := runRelay(t, oa, e.relayConfig(t, nil))
			testutil.Eventually(t, 10*time.Second, "A holds the lease", oa.Relaying)
			runRelay(t, ob, e.relayConfig(t, nil))
			defer func() { px.Restore(t); stopA(); poolA.Close() }()
			h.armed.Store(true)
			testutil.Eventually(t, 10*time.Second, "A's link black-holed mid-transaction", h.holed.Load)
			testutil.Eventually(t, 3*ttl, "B takes over", ob.Relaying)
			takeover := time.Since(time.Unix(0, h.holeAt.Load()))
			for i := range 20 {
				if _, err := publishOrder(ctx, e.pool, ob, e.msg("s", fmt.Sprintf("m%d", i)), true, 0); err != nil {
					t.Fatal(err)
				}
			}
			c.waitDistinct(t, 20, 15*time.Second)
			checkOrder(t, c.snapshot())
			t.Logf("B took over %v after A's link went dark mid-transaction (TTL %v)", takeover.Round(time.Millisecond), ttl)
			if takeover > ttl+ttl/5+time.Second {
				t.Errorf("takeover took %v", takeover)
			}
		})
	}
}
