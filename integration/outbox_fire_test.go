package integration

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	neturl "net/url"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/rabbitkit/rabbitkit/internal/history"
	"github.com/rabbitkit/rabbitkit/internal/ledger"
	"github.com/rabbitkit/rabbitkit/internal/pgtest"
	"github.com/rabbitkit/rabbitkit/internal/testbroker"
)

// TestOutboxRelayUnderFire: three examples/publisher -pg replicas of one service share one
// outbox in a private PostgreSQL server; each replica reaches PostgreSQL and the broker through
// proxies of its own. While they all write, the relay is attacked, one fault at a time: the
// leaseholder's process is SIGKILLed (three times), its PostgreSQL link is black-holed (it can
// neither renew nor release), its broker link is black-holed (it keeps the lease and cannot
// send), the PostgreSQL server is shut down (fast) and restarted, and the leaseholder's PostgreSQL
// and broker connections are cut. A consumer process with a PostgreSQL inbox (on the shared server)
// applies everything, through proxies of its own that are attacked too: its broker connection cut,
// its inbox connections cut and black-holed. So all four connections of outbox → broker → inbox
// take faults (the end-to-end test). Verdict: nothing lost, nothing applied twice, every order row's message
// applied (the business write and its message committed together), per-stream order of first
// applications, and takeovers within the lease's bound. TestSoakOutboxFire (build tag soak) is
// the long, random variant that writes docs/RELIABILITY-OUTBOX.md; it also crashes the server
// (immediate stop), which this test does not (TestSettleAfterCrash covers what a crash does to a
// COMMIT in flight: PostgreSQL can give the lost transaction's xid to a new one, so Settle decides
// by the commit mark the transaction wrote, not by pg_xact_status).
func TestOutboxRelayUnderFire(t *testing.T) {
	r := runOutboxFire(t, outboxFireParams{perReplica: 1200, rate: 40})
	t.Log("\n" + r.text)
}

type outboxFireParams struct {
	perReplica int
	rate       float64       // per replica, msgs/s
	faultsFor  time.Duration // 0: the fixed schedule of TestOutboxRelayUnderFire; else random faults for this long
	seed       uint64        // for the random schedule; 0: random
}

type outboxFireReport struct {
	params    outboxFireParams
	seed      uint64
	elapsed   time.Duration
	faults    map[string]int
	takeovers map[string][]time.Duration // per fault kind, the time until another relay (or, after a restart, any) held the lease
	result    history.Result
	orders    int
	text      string
}

const fireTTL = 2 * time.Second

// fireLease reads the relay lease on the private server directly (not through a replica's proxy).
type fireLease struct{ pool *pgxpool.Pool }

// holder returns the owner of a lease that has not expired, or "".
func (l fireLease) holder() string {
	owner, _ := l.row()
	return owner
}

// row returns the owner and the expiry of a lease that has not expired, or "".
func (l fireLease) row() (string, time.Time) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	var owner string
	var expires time.Time
	err := l.pool.QueryRow(ctx, `SELECT owner, expires FROM rabbitkit_outbox_leases WHERE name = 'relay' AND expires > now()`).Scan(&owner, &expires)
	if err != nil {
		return "", time.Time{}
	}
	return owner, expires
}

func runOutboxFire(t *testing.T, p outboxFireParams) outboxFireReport {
	start := time.Now()
	url := testbroker.SharedURL(t)
	server := pgtest.Private(t)
	direct := server.DSN(t)
	du, err := neturl.Parse(direct)
	if err != nil {
		t.Fatal(err)
	}
	const replicas = 3
	c := newCluster(t, url, "classic", replicas, p.perReplica)
	c.exchange = testbroker.Name(t, "fire-x")
	c.queue = testbroker.Name(t, "fire-q")
	c.rate = p.rate
	c.streams = 4
	// The consumer's inbox and ledger are on the shared server, and both of the consumer's links
	// go through proxies of their own, so that all four connections of the chain (writer and relay
	// to PostgreSQL, relay to broker, consumer to broker, consumer to its inbox) are under fire.
	consDirect := pgtest.DSN(t)
	cu, err := neturl.Parse(consDirect)
	if err != nil {
		t.Fatal(err)
	}
	consPG := testbroker.NewTCPProxy(t, cu.Host)
	cu.Host = consPG.Addr
	c.pg, c.pgDirect = cu.String(), consDirect
	consAMQP := testbroker.NewProxy(t, url)
	c.consURL = consAMQP.URL
	c.pgPub = []string{"-lease-ttl", fireTTL.String()}
	testbroker.DeleteQueues(t, url, c.queue, c.queue+".parked")
	testbroker.DeleteExchanges(t, url, c.exchange)
	pgPx := make([]*testbroker.Proxy, replicas)
	amqpPx := make([]*testbroker.Proxy, replicas)
	for i, s := range c.sources {
		s.name = "rk-outbox-fire"
		s.replica = "-r" + strconv.Itoa(i)
		pgPx[i] = testbroker.NewTCPProxy(t, du.Host)
		amqpPx[i] = testbroker.NewProxy(t, url)
		pu := *du
		pu.Host = pgPx[i].Addr
		s.args = []string{"-url", amqpPx[i].URL, "-pg", pu.String()}
	}
	lease := fireLease{pool: pgtest.PoolOn(t, direct, 2)}

	c.startConsumer(0)
	for _, s := range c.sources {
		c.startPublisher(s)
	}
	// The first holder: every replica races for the lease at start.
	c.sleep(time.Second)
	waitLease := func(what string, d time.Duration, ok func(owner string) bool) (string, time.Duration) {
		t0 := time.Now()
		for {
			if o := lease.holder(); o != "" && ok(o) {
				return o, time.Since(t0)
			}
			if time.Since(t0) > d {
				t.Fatalf("no relay lease (%s) within %v", what, d)
			}
			c.sleep(20 * time.Millisecond)
		}
	}
	waitLease("first holder", 30*time.Second, func(string) bool { return true })
	c.sleep(2 * time.Second)

	// holderIdx names the replica whose current process holds the lease (the owner names the pid).
	holderIdx := func() (int, string) {
		o, _ := waitLease("a holder", 30*time.Second, func(string) bool { return true })
		for i, s := range c.sources {
			if s.cur != nil && !s.cur.proc.exited() && strings.Contains(o, "-"+strconv.Itoa(s.cur.proc.cmd.Process.Pid)+"-") {
				return i, o
			}
		}
		return -1, o // a process that died on its own, or one just restarted: its lease expires
	}
	takeovers := map[string][]time.Duration{}
	other := func(old string) func(string) bool { return func(o string) bool { return o != old } }
	// pick keeps every kill mid-stream: a finished replica is given more work first.
	ensureRunning := func(i int) {
		s := c.sources[i]
		if s.cur.proc.exited() {
			s.target += 200
			c.startPublisher(s)
			c.sleep(time.Second)
		}
	}
	type fault struct {
		name string
		do   func() bool // false: skipped (no running process held the lease)
	}
	kinds := []fault{
		{"leaseholder SIGKILL + restart", func() bool {
			i, old := holderIdx()
			if i < 0 {
				return false
			}
			c.killPublisher(c.sources[i])
			_, d := waitLease("after a SIGKILL", 6*fireTTL, other(old))
			takeovers["leaseholder SIGKILL + restart"] = append(takeovers["leaseholder SIGKILL + restart"], d)
			return true
		}},
		{"leaseholder's PostgreSQL link black-holed", func() bool {
			i, old := holderIdx()
			if i < 0 {
				return false
			}
			ensureRunning(i)
			pgPx[i].Blackhole(t)
			_, d := waitLease("after a PostgreSQL black hole", 6*fireTTL, other(old))
			takeovers["leaseholder's PostgreSQL link black-holed"] = append(takeovers["leaseholder's PostgreSQL link black-holed"], d)
			c.sleep(time.Second)
			pgPx[i].Restore(t)
			pgPx[i].Cut(t) // the bytes that vanished leave both ends waiting: close the sockets
			return true
		}},
		{"leaseholder's broker link black-holed (4 s)", func() bool {
			i, _ := holderIdx()
			if i < 0 {
				return false
			}
			amqpPx[i].Blackhole(t)
			c.sleep(4 * time.Second)
			amqpPx[i].Restore(t)
			amqpPx[i].Cut(t)
			return true
		}},
		{"PostgreSQL crash (immediate) + restart", func() bool {
			_, before := lease.row()
			server.Stop(t)
			c.sleep(time.Second)
			server.Start(t)
			// The lease row survives the crash: wait for a renewal (or a takeover) after the restart.
			_, d := waitLease("renewed after the restart", 6*fireTTL+30*time.Second, func(string) bool {
				_, e := lease.row()
				return e.After(before)
			})
			takeovers["PostgreSQL crash (immediate) + restart"] = append(takeovers["PostgreSQL crash (immediate) + restart"], d)
			return true
		}},
		{"PostgreSQL fast shutdown + restart", func() bool {
			_, before := lease.row()
			server.StopFast(t)
			c.sleep(time.Second)
			server.Start(t)
			_, d := waitLease("renewed after the restart", 6*fireTTL+30*time.Second, func(string) bool {
				_, e := lease.row()
				return e.After(before)
			})
			takeovers["PostgreSQL fast shutdown + restart"] = append(takeovers["PostgreSQL fast shutdown + restart"], d)
			return true
		}},
		{"leaseholder's PostgreSQL connections cut", func() bool {
			i, _ := holderIdx()
			if i >= 0 {
				pgPx[i].Cut(t)
			}
			return i >= 0
		}},
		{"leaseholder's broker connections cut", func() bool {
			i, _ := holderIdx()
			if i >= 0 {
				amqpPx[i].Cut(t)
			}
			return i >= 0
		}},
		{"consumer's broker connection cut", func() bool {
			consAMQP.Cut(t)
			return true
		}},
		{"consumer's PostgreSQL connections cut", func() bool {
			consPG.Cut(t)
			return true
		}},
		{"consumer's PostgreSQL link black-holed (3 s)", func() bool {
			consPG.Blackhole(t)
			c.sleep(3 * time.Second)
			consPG.Restore(t)
			consPG.Cut(t)
			return true
		}},
	}
	byName := map[string]fault{}
	for _, k := range kinds {
		byName[k.name] = k
	}
	seed := p.seed
	if seed == 0 {
		seed = rand.Uint64()
	}
	rng := rand.New(rand.NewPCG(seed, 3))
	counts := map[string]int{}
	run := func(f fault) {
		if f.do() {
			counts[f.name]++
		}
		c.sleep(time.Duration(1000+rng.IntN(1000)) * time.Millisecond)
	}
	if p.faultsFor == 0 {
		for _, n := range []string{
			"leaseholder SIGKILL + restart", "leaseholder's PostgreSQL link black-holed", "leaseholder SIGKILL + restart",
			"leaseholder's broker link black-holed (4 s)", "PostgreSQL fast shutdown + restart", "leaseholder SIGKILL + restart",
			"leaseholder's PostgreSQL connections cut", "leaseholder's broker connections cut",
			"consumer's broker connection cut", "consumer's PostgreSQL link black-holed (3 s)", "consumer's PostgreSQL connections cut",
		} {
			run(byName[n])
		}
	} else {
		t.Logf("fault seed %d", seed)
		for end := time.Now().Add(p.faultsFor); time.Now().Before(end); {
			run(kinds[rng.IntN(len(kinds))])
		}
	}
	for i := range replicas {
		pgPx[i].Restore(t)
		amqpPx[i].Restore(t)
	}
	consPG.Restore(t)
	consAMQP.Restore(t)
	t.Logf("faults: %v", counts)
	c.finish(3 * time.Minute)

	// The verdict, as TestOutboxReplicas: replicas interleave on one source, so a SIGKILL can leave
	// one committed message unprinted, which the checker counts as Phantom.
	kills := 0
	for _, s := range c.sources {
		kills += s.kills
	}
	res := history.Check(c.history())
	ctx := context.Background()
	var left, orders int
	if err := lease.pool.QueryRow(ctx, `SELECT count(*) FROM rabbitkit_outbox`).Scan(&left); err != nil {
		t.Fatal(err)
	}
	if err := lease.pool.QueryRow(ctx, `SELECT count(*) FROM rabbitkit_example_orders`).Scan(&orders); err != nil {
		t.Fatal(err)
	}
	if left != 0 {
		t.Errorf("%d rows left in the outbox after every replica exited", left)
	}
	if res.Lost != 0 || res.AppliedTwice != 0 || res.AcceptedTwice != 0 || res.FalseGaps != 0 || res.Conflicts != 0 || res.Phantom > kills {
		t.Errorf("guarantee broken: %+v\n%s", res, strings.Join(res.Samples, "\n"))
	}
	if want := replicas * p.perReplica; res.Accepted < want {
		t.Errorf("%d messages accepted, want at least %d", res.Accepted, want)
	}
	if res.Applied != orders {
		t.Errorf("%d messages applied but %d order rows committed: the business write and its message did not commit together", res.Applied, orders)
	}
	if unprinted := orders - res.Accepted; unprinted < 0 || unprinted > kills {
		t.Errorf("%d order rows, %d accepted lines: at most %d committed without a printed line", orders, res.Accepted, kills)
	}
	c.mu.Lock()
	junk, failures := c.junk, c.failures
	c.mu.Unlock()
	if len(junk) > 0 {
		t.Errorf("%d unparsable stdout lines, first: %q", len(junk), junk[0])
	}
	for _, f := range failures {
		t.Errorf("a process failed on its own: %s", f)
	}
	outOfOrder := checkLedgerOrder(t, c.pgDirect)

	// Takeover: the documented bound is LeaseTTL + LeaseTTL/5 after the holder's last renewal;
	// measured from the fault, plus the time this poller and the replicas' renewal ticks take on a
	// loaded machine.
	slack := 1500 * time.Millisecond
	for _, k := range []string{"leaseholder SIGKILL + restart", "leaseholder's PostgreSQL link black-holed"} {
		for _, d := range takeovers[k] {
			if d > fireTTL+fireTTL/5+slack {
				t.Errorf("%s: another relay took over after %v, bound %v (+%v slack)", k, d.Round(time.Millisecond), fireTTL+fireTTL/5, slack)
			}
		}
	}

	r := outboxFireReport{params: p, seed: seed, elapsed: time.Since(start), faults: counts, takeovers: takeovers, result: res, orders: orders}
	var b strings.Builder
	fmt.Fprintf(&b, "relay under fire: %d replicas x %d messages (at %.0f/s each), lease TTL %v, %d order rows, %d outbox rows left, %d effects out of per-stream order, %v\n\n",
		replicas, p.perReplica, p.rate, fireTTL, orders, left, outOfOrder, r.elapsed.Round(time.Second))
	b.WriteString(res.Table().String() + "\n")
	b.WriteString(takeoverTable(counts, takeovers).String() + "\n")
	b.WriteString(c.processTable().String())
	r.text = b.String()
	return r
}

// takeoverTable: per fault kind, how often it ran and the time until a relay held the lease again.
func takeoverTable(counts map[string]int, takeovers map[string][]time.Duration) history.Table {
	tb := history.Table{Header: []string{"fault", "times", "lease held again after: min", "median", "max"}}
	var names []string
	for k := range counts {
		names = append(names, k)
	}
	slices.Sort(names)
	for _, k := range names {
		row := []string{k, strconv.Itoa(counts[k]), "", "", ""}
		if ds := slices.Clone(takeovers[k]); len(ds) > 0 {
			slices.Sort(ds)
			f := func(d time.Duration) string { return d.Round(10 * time.Millisecond).String() }
			row[2], row[3], row[4] = f(ds[0]), f(ds[len(ds)/2]), f(ds[len(ds)-1])
		}
		tb.Rows = append(tb.Rows, row)
	}
	return tb
}

// checkLedgerOrder fails t unless, per stream, the ledger's rows in insertion order have strictly
// increasing seqs (the consumer applies first arrivals, and drops duplicates): per-stream order of
// first arrivals. It returns how many rows were out of order.
func checkLedgerOrder(t *testing.T, dsn string) int {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	rows, err := conn.Query(ctx, `SELECT source, epoch, stream, seq FROM `+ledger.DefaultPGTable+` ORDER BY id`)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	last := map[string]int64{}
	bad := 0
	for rows.Next() {
		var src, stream string
		var epoch, seq int64
		if err := rows.Scan(&src, &epoch, &stream, &seq); err != nil {
			t.Fatal(err)
		}
		k := fmt.Sprintf("%s/%d/%s", src, epoch, stream)
		if seq <= last[k] {
			if bad < 10 {
				t.Errorf("stream %s: seq %d applied after %d", k, seq, last[k])
			}
			bad++
		}
		last[k] = seq
	}
	if err := rows.Err(); err != nil && !errors.Is(err, context.Canceled) {
		t.Fatal(err)
	}
	return bad
}
