package integration

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net/url"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/rabbitkit/rabbitkit/internal/history"
	"github.com/rabbitkit/rabbitkit/internal/ledger"
	"github.com/rabbitkit/rabbitkit/internal/pgtest"
	"github.com/rabbitkit/rabbitkit/internal/testbroker"
)

// TestPGCompetingConsumers: three consumer processes (examples/consumer -pg) on one queue share
// one PostgreSQL inbox, and their handler inserts one ledger row per message with no unique
// constraint. They are SIGKILLed and restarted at random, and the connections to the broker and
// to PostgreSQL are cut and reset (toxiproxy), some of them while COMMIT is in flight. Every
// message a publisher accepted must have exactly one ledger row, and nothing may be reported
// missing: a seq handled by another replica is not a gap.
func TestPGCompetingConsumers(t *testing.T) {
	runPGChaos(t, pgChaosParams{sources: 2, perSource: 2500, rate: 150, consumers: 3, faultsFor: 25 * time.Second})
}

type pgChaosParams struct {
	sources, perSource int
	rate               float64 // per source, msgs/s
	consumers          int
	faultsFor          time.Duration
	restarts           bool // also crash and restart PostgreSQL (a private server)
}

type pgChaosReport struct {
	params  pgChaosParams
	seed    uint64
	elapsed time.Duration
	faults  map[string]int
	result  history.Result
	text    string
}

// runPGChaos runs competing consumers on the PostgreSQL inbox under faults and fails t unless
// every accepted message was applied exactly once.
func runPGChaos(t *testing.T, p pgChaosParams) pgChaosReport {
	start := time.Now()
	url0 := testbroker.SharedURL(t)
	var dsn string
	var server *pgtest.Server
	if p.restarts {
		server = pgtest.Private(t)
		dsn = server.DSN(t)
	} else {
		dsn = pgtest.DSN(t)
	}
	u, err := url.Parse(dsn)
	if err != nil {
		t.Fatal(err)
	}
	pgProxy := testbroker.NewTCPProxy(t, u.Host)
	proxied := *u
	proxied.Host = pgProxy.Addr
	broker := testbroker.NewProxy(t, url0)

	c := newCluster(t, broker.URL, "classic", p.sources, p.perSource)
	c.exchange = testbroker.Name(t, "pg-x")
	c.queue = testbroker.Name(t, "pg-q")
	c.rate = p.rate
	c.streams = 4
	c.consumers = p.consumers
	c.pg, c.pgDirect = proxied.String(), dsn
	testbroker.DeleteQueues(t, url0, c.queue, c.queue+".parked")
	testbroker.DeleteExchanges(t, url0, c.exchange)

	c.startConsumers()
	for _, s := range c.sources {
		c.startPublisher(s)
	}
	seed := rand.Uint64()
	t.Logf("fault seed %d", seed)
	rng := rand.New(rand.NewPCG(seed, 1))
	type fault struct {
		name string
		do   func()
	}
	faults := []fault{
		{"consumer SIGKILL + restart", func() { c.killConsumerAt(rng.IntN(c.consumers)) }},
		{"another consumer SIGKILL + restart", func() { c.killConsumerAt(rng.IntN(c.consumers)) }},
		{"PostgreSQL connections cut", func() { pgProxy.Cut(t) }},
		{"PostgreSQL connections reset (RST)", func() { pgProxy.ResetPeer(t); c.sleep(500 * time.Millisecond); pgProxy.Restore(t) }},
		{"PostgreSQL unreachable (3 s)", func() { pgProxy.Down(t); c.sleep(3 * time.Second); pgProxy.Up(t) }},
		{"broker connections cut", func() { broker.Cut(t) }},
	}
	if server != nil {
		faults = append(faults,
			fault{"PostgreSQL crash (immediate) + restart", func() { server.Stop(t); c.sleep(time.Second); server.Start(t) }},
			fault{"PostgreSQL fast shutdown + restart", func() { server.StopFast(t); server.Start(t) }},
		)
	}
	counts := map[string]int{}
	for end := time.Now().Add(p.faultsFor); time.Now().Before(end); {
		f := faults[rng.IntN(len(faults))]
		f.do()
		counts[f.name]++
		c.sleep(time.Duration(700+rng.IntN(1300)) * time.Millisecond)
	}
	t.Logf("faults: %v", counts)
	c.finish(5 * time.Minute)

	res, text := c.requireExactlyOnce()
	c.mu.Lock()
	defer c.mu.Unlock()
	busy := 0
	for _, st := range c.consStats {
		if st["handled"] > 0 {
			busy++
		}
	}
	if busy < 3 {
		t.Fatalf("only %d consumer runs handled anything: the replicas did not compete", busy)
	}
	return pgChaosReport{params: p, seed: seed, elapsed: time.Since(start), faults: counts, result: res, text: text}
}

// TestPGPartitionFailover: two consumer processes (-pg -partitions 4) form a group over four
// partition queues; publishers route each stream to its partition. Members are SIGKILLed at
// random and restarted: a dead member's partitions move to the other once its leases expire.
// Every accepted message has exactly one ledger row, and each stream's rows, in insertion order,
// have strictly increasing seqs: per-stream order holds across every move.
func TestPGPartitionFailover(t *testing.T) {
	url0 := testbroker.SharedURL(t)
	dsn := pgtest.DSN(t)
	c := newCluster(t, url0, "classic", 2, 2000)
	c.exchange = testbroker.Name(t, "part-x")
	c.queue = testbroker.Name(t, "part-q")
	c.rate = 150
	c.streams = 8
	c.consumers = 2
	c.partitions = 4
	c.pg = dsn
	var qs []string
	for i := range c.partitions {
		qs = append(qs, fmt.Sprintf("%s.%d", c.queue, i))
	}
	testbroker.DeleteQueues(t, url0, qs...)
	testbroker.DeleteExchanges(t, url0, c.exchange)

	c.startConsumers()
	for _, s := range c.sources {
		c.startPublisher(s)
	}
	rng := rand.New(rand.NewPCG(rand.Uint64(), 2))
	kills := 0
	for end := time.Now().Add(16 * time.Second); time.Now().Before(end); kills++ {
		c.sleep(time.Duration(2000+rng.IntN(2000)) * time.Millisecond)
		c.killConsumerAt(rng.IntN(c.consumers))
	}
	t.Logf("%d members SIGKILLed", kills)
	c.finish(3 * time.Minute)

	c.requireExactlyOnce()
	// Order: per stream, the ledger's rows in insertion order.
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	rows, err := conn.Query(ctx, `SELECT source, stream, seq FROM `+ledger.DefaultPGTable+` ORDER BY id`)
	if err != nil {
		t.Fatal(err)
	}
	last := map[string]int64{}
	bad := 0
	for rows.Next() {
		var src, stream string
		var seq int64
		if err := rows.Scan(&src, &stream, &seq); err != nil {
			t.Fatal(err)
		}
		k := src + "/" + stream
		if seq <= last[k] {
			if bad < 10 {
				t.Errorf("stream %s: seq %d applied after %d", k, seq, last[k])
			}
			bad++
		}
		last[k] = seq
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	if bad > 0 {
		t.Fatalf("%d effects out of per-stream order", bad)
	}
	if len(last) != len(c.sources)*c.streams {
		t.Fatalf("%d streams in the ledger, want %d", len(last), len(c.sources)*c.streams)
	}
}

// requireExactlyOnce checks the history: every message the publishers accepted applied exactly
// once (one ledger row each), nothing else applied, no process failed on its own. It returns the
// verdict and its tables.
func (c *cluster) requireExactlyOnce() (history.Result, string) {
	t := c.t
	res := history.Check(c.history())
	text := res.Table().String() + "\n" + c.processTable().String()
	t.Log("\n" + text)
	want := 0
	for _, s := range c.sources {
		want += s.target
	}
	if !res.OK() || res.Accepted != want || res.ExactlyOnce != want {
		t.Fatalf("want all %d accepted messages applied exactly once (one ledger row each): %+v", want, res)
	}
	for _, f := range c.failures {
		t.Errorf("a process failed: %s", f)
	}
	return res, text
}
