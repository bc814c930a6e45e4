package pgoutbox_test

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/rabbitkit/rabbitkit/internal/pgtest"
	"github.com/rabbitkit/rabbitkit/internal/testbroker"
	"github.com/rabbitkit/rabbitkit/internal/testutil"
	"github.com/rabbitkit/rabbitkit/protocol"
	"github.com/rabbitkit/rabbitkit/publisher"
	"github.com/rabbitkit/rabbitkit/publisher/pgoutbox"
)

// publishOrder inserts a business row and publishes msg in one transaction, committed or rolled
// back.
func publishOrder(ctx context.Context, pool *pgxpool.Pool, o *pgoutbox.Outbox, msg publisher.Message, commit bool, pause time.Duration) (protocol.Stamp, error) {
	tx, err := pool.Begin(ctx)
	if err != nil {
		return protocol.Stamp{}, err
	}
	defer func() { _ = tx.Rollback(context.Background()) }()
	if _, err := tx.Exec(ctx, `INSERT INTO orders (note) VALUES ($1)`, string(msg.Body)); err != nil {
		return protocol.Stamp{}, err
	}
	st, err := o.PublishTx(ctx, tx, msg)
	if err != nil {
		return protocol.Stamp{}, err
	}
	if pause > 0 {
		time.Sleep(pause)
	}
	if !commit {
		return st, tx.Rollback(ctx)
	}
	return st, tx.Commit(ctx)
}

// Commit sends, rollback sends nothing and skips no seq; the stamp travels as message-id.
func TestCommitSendsRollbackDoesNot(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t, 6)
	o := open(t, e.pool, pgoutbox.Options{})
	c := collect(t, e.url, e.queue)
	runRelay(t, o, e.relayConfig(t, nil))

	st1, err := publishOrder(ctx, e.pool, o, e.msg("orders", "o1"), true, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := publishOrder(ctx, e.pool, o, e.msg("orders", "rolled-back"), false, 0); err != nil {
		t.Fatal(err)
	}
	st3, err := publishOrder(ctx, e.pool, o, e.msg("orders", "o3"), true, 0)
	if err != nil {
		t.Fatal(err)
	}
	want1 := protocol.Stamp{Source: "orders-svc", Epoch: 1, Stream: "orders", Seq: 1}
	if st1 != want1 || st3.Seq != 2 {
		t.Fatalf("stamps %v, %v; want %v and seq 2 (a rollback skips nothing)", st1, st3, want1)
	}
	// The batch form: two streams, one transaction.
	tx, err := e.pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	sts, err := o.PublishBatchTx(ctx, tx, []publisher.Message{e.msg("orders", "b1"), e.msg("other", "b2"), e.msg("orders", "b3")})
	if err != nil {
		t.Fatal(err)
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	if sts[0].Seq != 3 || sts[1].Seq != 1 || sts[2].Seq != 4 {
		t.Fatalf("batch stamps %v", sts)
	}
	// An invalid message fails like Publish, and leaves the transaction usable.
	if _, err := publishOrder(ctx, e.pool, o, publisher.Message{RoutingKey: e.queue, MessageID: "rk2:x"}, true, 0); !errors.Is(err, publisher.ErrInvalidMessage) {
		t.Fatalf("invalid message: %v", err)
	}

	c.waitDistinct(t, 5, 15*time.Second)
	time.Sleep(300 * time.Millisecond)
	gs := c.snapshot()
	checkOrder(t, gs)
	bodies := map[string]protocol.Stamp{}
	for _, g := range gs {
		bodies[g.body] = g.stamp
	}
	if _, ok := bodies["rolled-back"]; ok {
		t.Fatal("a rolled-back message was sent")
	}
	if bodies["o1"] != st1 || bodies["o3"] != st3 || bodies["b2"] != sts[1] {
		t.Fatalf("delivered %v", bodies)
	}
	// Confirmed rows are deleted.
	deadline := time.Now().Add(5 * time.Second)
	for {
		var n int
		if err := e.pool.QueryRow(ctx, `SELECT count(*) FROM rabbitkit_outbox`).Scan(&n); err != nil {
			t.Fatal(err)
		}
		if n == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d confirmed rows left in the outbox", n)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// Concurrent writers over a few streams commit out of order (some sleep before COMMIT, some roll
// back) while the relay reads: every stream arrives in seq order, none skipped, no rolled-back
// message sent. A naive reader by serial id, run alongside, is shown to skip rows.
func TestOrderUnderConcurrentWriters(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t, 12)
	o := open(t, e.pool, pgoutbox.Options{PollInterval: 5 * time.Millisecond})
	c := collect(t, e.url, e.queue)
	cfg := e.relayConfig(t, nil)
	cfg.ReadBatch = 8 // pages fill, so the read-ahead (view.Read) runs between out-of-order commits
	runRelay(t, o, cfg)

	// The naive relay: reads WHERE id > last ORDER BY id and moves last to the highest id seen.
	var naiveSeen sync.Map
	naiveCtx, stopNaive := context.WithCancel(ctx)
	naiveDone := make(chan struct{})
	go func() {
		defer close(naiveDone)
		var last int64
		for naiveCtx.Err() == nil {
			rows, err := e.pool.Query(naiveCtx, `SELECT id, body FROM rabbitkit_outbox WHERE id > $1 ORDER BY id`, last)
			if err != nil {
				return
			}
			for rows.Next() {
				var id int64
				var b []byte
				if rows.Scan(&id, &b) == nil {
					naiveSeen.Store(string(b), true)
					last = max(last, id)
				}
			}
			rows.Close()
		}
	}()

	const writers, perWriter = 8, 40
	streams := []string{"s0", "s1", "s2", "s3"}
	var mu sync.Mutex
	committed := map[string]bool{}
	rolledBack := map[string]bool{}
	var wg sync.WaitGroup
	for w := range writers {
		wg.Go(func() {
			for i := range perWriter {
				body := fmt.Sprintf("w%d-%d", w, i)
				commit := rand.IntN(100) >= 15
				pause := time.Duration(rand.IntN(4000)) * time.Microsecond
				if rand.IntN(10) == 0 {
					pause = 20 * time.Millisecond
				}
				_, err := publishOrder(ctx, e.pool, o, e.msg(streams[rand.IntN(len(streams))], body), commit, pause)
				if err != nil {
					t.Errorf("writer %d: %v", w, err)
					return
				}
				mu.Lock()
				if commit {
					committed[body] = true
				} else {
					rolledBack[body] = true
				}
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	c.waitDistinct(t, len(committed), 30*time.Second)
	time.Sleep(300 * time.Millisecond)
	stopNaive()
	<-naiveDone
	gs := c.snapshot()
	firsts := checkOrder(t, gs)
	sent := map[string]bool{}
	for _, g := range gs {
		sent[g.body] = true
		if rolledBack[g.body] {
			t.Errorf("rolled-back %s was sent", g.body)
		}
	}
	for b := range committed {
		if !sent[b] {
			t.Errorf("committed %s never sent", b)
		}
	}
	n := 0
	for s, fs := range firsts {
		n += len(fs)
		t.Logf("stream %s: seq 1..%d in order", s, len(fs))
	}
	naiveMissed := 0
	for b := range committed {
		if _, ok := naiveSeen.Load(b); !ok {
			naiveMissed++
		}
	}
	t.Logf("%d committed, %d rolled back, %d delivered (%d copies); a naive reader by serial id skipped %d committed rows",
		len(committed), len(rolledBack), n, len(gs), naiveMissed)
}

// pgURLVia returns dsn with its host:port replaced by addr.
func pgURLVia(t testing.TB, dsn, addr string) string {
	u, err := url.Parse(dsn)
	if err != nil {
		t.Fatal(err)
	}
	u.Host = addr
	return u.String()
}

func pgHost(t testing.TB, dsn string) string {
	u, err := url.Parse(dsn)
	if err != nil {
		t.Fatal(err)
	}
	return u.Host
}

// Two replicas relay one outbox: only one sends at a time; the holder's database connection is
// cut off (it can neither renew nor release), it stops sending before its lease expires, the
// other takes over within the bound, and every message arrives in per-stream order.
func TestTwoRelaysTakeover(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t, 6)
	px := testbroker.NewTCPProxy(t, pgHost(t, e.dsn))
	poolA := pgtest.PoolOn(t, pgURLVia(t, e.dsn, px.Addr), 4)
	ttl := 2 * time.Second
	oa := open(t, poolA, pgoutbox.Options{LeaseTTL: ttl, Owner: "A"})
	ob := open(t, e.pool, pgoutbox.Options{LeaseTTL: ttl, Owner: "B"})
	c := collect(t, e.url, e.queue)
	ma, mb := &countingRecorder{}, &countingRecorder{}
	runRelay(t, oa, e.relayConfig(t, ma))
	testutil.Eventually(t, 10*time.Second, "A holds the lease", oa.Relaying)
	runRelay(t, ob, e.relayConfig(t, mb))

	var overlap, stopSampling atomic.Bool
	var sampling sync.WaitGroup
	sampling.Go(func() {
		for !stopSampling.Load() {
			if oa.Relaying() && ob.Relaying() {
				overlap.Store(true)
			}
			time.Sleep(5 * time.Millisecond)
		}
	})
	const total = 300
	var written atomic.Int64
	var wg sync.WaitGroup
	wg.Go(func() {
		for i := range total {
			if _, err := publishOrder(ctx, e.pool, ob, e.msg(fmt.Sprintf("s%d", i%3), fmt.Sprintf("m%d", i)), true, 0); err != nil {
				t.Errorf("write %d: %v", i, err)
				return
			}
			written.Add(1)
			time.Sleep(5 * time.Millisecond)
		}
	})
	c.waitDistinct(t, 50, 15*time.Second)
	cut := time.Now()
	px.Blackhole(t) // A's database calls hang: no renewal, no release
	testutil.Eventually(t, 3*ttl, "B takes over", ob.Relaying)
	takeover := time.Since(cut)
	if oa.Relaying() {
		t.Error("A still relaying after B took over")
	}
	aSent := ma.get(publisher.MetricPublished)
	wg.Wait()
	c.waitDistinct(t, total, 30*time.Second)
	time.Sleep(300 * time.Millisecond)
	stopSampling.Store(true)
	sampling.Wait()
	if overlap.Load() {
		t.Error("both relays were sending at once")
	}
	if later := ma.get(publisher.MetricPublished); later != aSent {
		t.Errorf("A published %v more after B took over", later-aSent)
	}
	gs := c.snapshot()
	checkOrder(t, gs)
	t.Logf("takeover %v after the cut (TTL %v, bound TTL+TTL/5 after the last renewal); A sent %v, B sent %v, %d deliveries of %d messages",
		takeover.Round(time.Millisecond), ttl, aSent, mb.get(publisher.MetricPublished), len(gs), total)
	if takeover > ttl+ttl/5+time.Second {
		t.Errorf("takeover took %v", takeover)
	}
	px.Restore(t)
}

// A database whose identity changed (restored, failed over: simulated by editing the recorded
// system identifier) gets a new epoch at Open; the old epoch's pending rows are sent first under
// their own epoch, the new ones from seq 1 under the new epoch.
func TestEpochBumpOnIdentityChange(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t, 6)
	o := open(t, e.pool, pgoutbox.Options{})
	for i := range 2 {
		if _, err := publishOrder(ctx, e.pool, o, e.msg("orders", fmt.Sprintf("old%d", i)), true, 0); err != nil {
			t.Fatal(err)
		}
	}
	if o.Epoch() != 1 || o.EpochBumped() {
		t.Fatalf("epoch %d bumped %v", o.Epoch(), o.EpochBumped())
	}
	if _, err := e.pool.Exec(ctx, `UPDATE rabbitkit_outbox_meta SET sysid = sysid + 1`); err != nil {
		t.Fatal(err)
	}
	o2 := open(t, e.pool, pgoutbox.Options{})
	if o2.Epoch() != 2 || !o2.EpochBumped() {
		t.Fatalf("after the identity change: epoch %d bumped %v", o2.Epoch(), o2.EpochBumped())
	}
	st, err := publishOrder(ctx, e.pool, o2, e.msg("orders", "new0"), true, 0)
	if err != nil {
		t.Fatal(err)
	}
	if st.Epoch != 2 || st.Seq != 1 {
		t.Fatalf("new stamp %v", st)
	}
	if o3 := open(t, e.pool, pgoutbox.Options{}); o3.EpochBumped() || o3.Epoch() != 2 {
		t.Fatalf("a second Open bumped again: %d", o3.Epoch())
	}
	c := collect(t, e.url, e.queue)
	runRelay(t, o2, e.relayConfig(t, nil))
	c.waitDistinct(t, 3, 20*time.Second)
	var order []string
	for _, g := range c.snapshot() {
		order = append(order, fmt.Sprintf("%d:%d:%s", g.stamp.Epoch, g.stamp.Seq, g.body))
	}
	if got := strings.Join(order, " "); got != "1:1:old0 1:2:old1 2:1:new0" {
		t.Fatalf("sent %s", got)
	}
}

// Open refuses another source and a newer schema; concurrent Opens migrate once.
func TestOpenRefusals(t *testing.T) {
	ctx := context.Background()
	pool := pgtest.PoolOn(t, pgtest.DSN(t), 6)
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			if _, err := pgoutbox.Open(ctx, pool, pgoutbox.Options{Source: "svc", Logger: quiet(t)}); err != nil {
				t.Errorf("concurrent Open: %v", err)
			}
		})
	}
	wg.Wait()
	if _, err := pgoutbox.Open(ctx, pool, pgoutbox.Options{Source: "another", Logger: quiet(t)}); !errors.Is(err, pgoutbox.ErrSourceMismatch) {
		t.Fatalf("another source: %v", err)
	}
	if _, err := pgoutbox.Open(ctx, pool, pgoutbox.Options{Logger: quiet(t)}); !errors.Is(err, pgoutbox.ErrInvalidConfig) {
		t.Fatalf("no source: %v", err)
	}
	if _, err := pool.Exec(ctx, `INSERT INTO rabbitkit_outbox_schema (version, note) VALUES (99, 'future')`); err != nil {
		t.Fatal(err)
	}
	if _, err := pgoutbox.Open(ctx, pool, pgoutbox.Options{Source: "svc", Logger: quiet(t)}); !errors.Is(err, pgoutbox.ErrSchemaVersion) {
		t.Fatalf("newer schema: %v", err)
	}
	// A schema-qualified table of its own.
	if _, err := pool.Exec(ctx, `CREATE SCHEMA app`); err != nil {
		t.Fatal(err)
	}
	if _, err := pgoutbox.Open(ctx, pool, pgoutbox.Options{Source: "svc", Table: "app.outbox", Logger: quiet(t)}); err != nil {
		t.Fatal(err)
	}
}

// An unroutable message is parked with its reason, listed, and re-driven with its stamp.
func TestParkAndRedrive(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t, 6)
	o := open(t, e.pool, pgoutbox.Options{})
	missing := testbroker.Name(t, "nowhere")
	testbroker.DeleteQueues(t, e.url, missing)
	c := collect(t, e.url, e.queue)
	runRelay(t, o, e.relayConfig(t, nil))
	st, err := publishOrder(ctx, e.pool, o, publisher.Message{RoutingKey: missing, Stream: "orders", Body: []byte("lost?")}, true, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := publishOrder(ctx, e.pool, o, e.msg("orders", "after"), true, 0); err != nil {
		t.Fatal(err)
	}
	c.waitDistinct(t, 1, 15*time.Second) // the next message is not held behind the parked one
	var parked []pgoutbox.ParkedEntry
	testutil.Eventually(t, 10*time.Second, "the unroutable message is parked", func() bool {
		parked, err = o.Parked(ctx)
		return err == nil && len(parked) == 1
	})
	if parked[0].Seq != st.Seq || !strings.Contains(parked[0].Reason, "312") {
		t.Fatalf("parked %+v", parked[0])
	}
	// Fix the cause (a queue under that name), then re-drive.
	c2 := collect(t, e.url, missing)
	if n, err := o.Redrive(ctx, parked[0].ID); err != nil || n != 1 {
		t.Fatalf("Redrive: %d, %v", n, err)
	}
	c2.waitDistinct(t, 1, 15*time.Second)
	if g := c2.snapshot()[0]; g.stamp != st || g.body != "lost?" {
		t.Fatalf("re-driven as %v %q, want %v", g.stamp, g.body, st)
	}
	b, err := o.Backlog(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("backlog after: %+v", b)
}

// PostgreSQL unreachable: PublishTx fails with the caller's transaction; the relay (whose
// database connection is cut) backs off and resumes, and nothing is lost.
func TestPostgresOutage(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t, 6)
	px := testbroker.NewTCPProxy(t, pgHost(t, e.dsn))
	pool := pgtest.PoolOn(t, pgURLVia(t, e.dsn, px.Addr), 4)
	o := open(t, pool, pgoutbox.Options{LeaseTTL: 5 * time.Second})
	c := collect(t, e.url, e.queue)
	cfg := e.relayConfig(t, nil)
	cfg.RetryBackoff = func() backoffT { return testutil.FastBackoff() }
	runRelay(t, o, cfg)
	for i := range 10 {
		if _, err := publishOrder(ctx, pool, o, e.msg("orders", fmt.Sprintf("a%d", i)), true, 0); err != nil {
			t.Fatal(err)
		}
	}
	c.waitDistinct(t, 10, 15*time.Second)
	px.Down(t)
	wctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	if _, err := publishOrder(wctx, pool, o, e.msg("orders", "during"), true, 0); err == nil {
		t.Fatal("PublishTx succeeded with the database down")
	}
	cancel()
	time.Sleep(1500 * time.Millisecond)
	px.Up(t)
	for i := range 10 {
		if _, err := publishOrder(ctx, pool, o, e.msg("orders", fmt.Sprintf("b%d", i)), true, 0); err != nil {
			t.Fatal(err)
		}
	}
	c.waitDistinct(t, 20, 30*time.Second)
	checkOrder(t, c.snapshot())
}

// commitCutter cuts the proxy a random moment after COMMIT starts.
type commitCutter struct {
	px  *testbroker.Proxy
	t   testing.TB
	arm atomic.Bool
}

func (cc *commitCutter) TraceQueryStart(ctx context.Context, _ *pgx.Conn, d pgx.TraceQueryStartData) context.Context {
	if strings.EqualFold(strings.TrimSpace(d.SQL), "commit") && cc.arm.CompareAndSwap(true, false) {
		if rand.IntN(3) == 0 {
			cc.px.Cut(cc.t) // before COMMIT leaves: the server rolls back
			return ctx
		}
		go func() {
			time.Sleep(time.Duration(rand.IntN(400)) * time.Microsecond)
			cc.px.Cut(cc.t)
		}()
	}
	return ctx
}

func (cc *commitCutter) TraceQueryEnd(context.Context, *pgx.Conn, pgx.TraceQueryEndData) {}

// A connection cut while COMMIT is in flight: TxID taken before COMMIT and Settle afterwards tell
// the outcome, which matches what the database holds.
func TestSettleUnknownCommit(t *testing.T) {
	ctx := context.Background()
	dsn := pgtest.DSN(t)
	direct := pgtest.PoolOn(t, dsn, 2)
	px := testbroker.NewTCPProxy(t, pgHost(t, dsn))
	cc := &commitCutter{px: px, t: t}
	cfg, err := pgxpool.ParseConfig(pgURLVia(t, dsn, px.Addr))
	if err != nil {
		t.Fatal(err)
	}
	cfg.MaxConns = 2
	cfg.ConnConfig.Tracer = cc
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	if _, err := direct.Exec(ctx, `CREATE TABLE orders (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, note text NOT NULL)`); err != nil {
		t.Fatal(err)
	}
	o := open(t, direct, pgoutbox.Options{})
	oViaProxy := open(t, pool, pgoutbox.Options{})
	var ok, unknownCommitted, unknownAborted int
	for i := 0; i < 60 && unknownCommitted+unknownAborted < 6; i++ {
		body := fmt.Sprintf("m%d", i)
		tx, err := pool.Begin(ctx)
		if err != nil {
			continue // the pool's connection was cut: a new one next time
		}
		if _, err := tx.Exec(ctx, `INSERT INTO orders (note) VALUES ($1)`, body); err != nil {
			_ = tx.Rollback(ctx)
			continue
		}
		if _, err := oViaProxy.PublishTx(ctx, tx, publisher.Message{RoutingKey: "q", Body: []byte(body)}); err != nil {
			_ = tx.Rollback(ctx)
			continue
		}
		tok, err := oViaProxy.TxID(ctx, tx)
		if err != nil {
			_ = tx.Rollback(ctx)
			continue
		}
		cc.arm.Store(rand.IntN(3) > 0)
		cerr := tx.Commit(ctx)
		cc.arm.Store(false)
		sctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		committed, err := o.Settle(sctx, tok)
		cancel()
		if err != nil {
			t.Fatalf("Settle: %v", err)
		}
		// pg_xact_status reports a commit once it is in the commit log, a moment before other
		// snapshots see it: give visibility that moment.
		var n int
		for try := 0; ; try++ {
			if err := direct.QueryRow(ctx, `SELECT count(*) FROM rabbitkit_outbox WHERE body = $1`, []byte(body)).Scan(&n); err != nil {
				t.Fatal(err)
			}
			if n == 1 || !committed || try == 100 {
				break
			}
			time.Sleep(10 * time.Millisecond)
		}
		if committed != (n == 1) {
			t.Fatalf("Settle says committed=%v, the outbox holds %d rows of %s", committed, n, body)
		}
		var orders int
		_ = direct.QueryRow(ctx, `SELECT count(*) FROM orders WHERE note = $1`, body).Scan(&orders)
		if orders != n {
			t.Fatalf("business row %d, outbox row %d: not atomic", orders, n)
		}
		switch {
		case cerr == nil:
			if !committed {
				t.Fatal("COMMIT succeeded but Settle says aborted")
			}
			ok++
		case committed:
			unknownCommitted++
		default:
			unknownAborted++
		}
	}
	t.Logf("COMMIT ok %d; cut during COMMIT, settled committed %d, settled aborted %d", ok, unknownCommitted, unknownAborted)
	if unknownCommitted+unknownAborted == 0 {
		t.Fatal("no COMMIT was cut")
	}
}
