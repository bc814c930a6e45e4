package integration

import (
	"fmt"
	"math/rand/v2"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/rabbitkit/rabbitkit/internal/history"
	"github.com/rabbitkit/rabbitkit/internal/testbroker"
	"github.com/rabbitkit/rabbitkit/topology"
)

// chaosParams sizes a chaos run.
type chaosParams struct {
	queueType string
	sources   int           // publisher processes, each its own source and journal
	perSource int           // messages each source must get accepted
	publishIn time.Duration // the publishers' rate is set so that publishing takes about this long
	perKind   int           // how many times each fault kind is injected
	pause     time.Duration // mean quiet time between two faults
}

// chaosReport is what a run measured.
type chaosReport struct {
	params  chaosParams
	seed    uint64
	elapsed time.Duration
	result  history.Result
	faults  []faultStat
	procs   history.Table
	text    string // all tables, as printed
}

// TestChaos is the short chaos run of `make test`: several publisher processes and a consumer
// process against a private RabbitMQ node behind a toxiproxy, through every fault kind twice, then
// the exactly-once check. It fails on any lost message, any message applied twice, any message
// applied that was never journaled, any gap reported for a message that arrived, and any process
// that died on its own.
func TestChaos(t *testing.T) {
	if testing.Short() {
		t.Skip("chaos run: starts a RabbitMQ node and takes a few minutes")
	}
	runChaos(t, chaosParams{
		queueType: topology.Classic, sources: 3, perSource: 10000,
		publishIn: 100 * time.Second, perKind: 2, pause: 2 * time.Second,
	})
}

// runChaos runs one chaos scenario and fails t when the guarantee does not hold.
func runChaos(t *testing.T, p chaosParams) chaosReport {
	start := time.Now()
	seed := rand.Uint64()
	if s := os.Getenv("RABBITKIT_CHAOS_SEED"); s != "" {
		v, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			t.Fatalf("RABBITKIT_CHAOS_SEED: %v", err)
		}
		seed = v
	}
	t.Logf("chaos seed %d (set RABBITKIT_CHAOS_SEED to replay the same fault order)", seed)
	rng := rand.New(rand.NewPCG(seed, 0x5eed))

	bin := binaries(t) // before the node: a build failure should not wait for a broker
	_ = bin
	node := testbroker.StartNode(t)
	proxy := testbroker.NewProxy(t, node.URL)

	c := newCluster(t, proxy.URL, p.queueType, p.sources, p.perSource)
	c.exchange = testbroker.Name(t, "chaos-x")
	c.queue = testbroker.Name(t, "chaos-q")
	c.rate = float64(p.perSource) / p.publishIn.Seconds()
	testbroker.DeleteQueues(t, node.URL, c.queue, c.queue+".parked") // tidy even though the node goes too

	c.startConsumer(0)
	for _, s := range c.sources {
		c.startPublisher(s)
	}

	hold := func(d time.Duration) { c.sleep(d) }
	// pick returns a source whose publisher is running; when every source has finished, it gives
	// one of them more work first, so that a kill always hits a publisher mid-stream.
	pick := func() *source {
		if run := c.running(); len(run) > 0 {
			return run[rng.IntN(len(run))]
		}
		src := c.sources[rng.IntN(len(c.sources))]
		src.target += 500
		c.startPublisher(src)
		hold(time.Second)
		return src
	}
	kinds := []fault{
		{"connection cut (proxy drops every socket)", func(t testing.TB) { proxy.Cut(t) }},
		{"connection reset (TCP RST)", func(t testing.TB) { proxy.ResetPeer(t); hold(time.Second); proxy.Restore(t) }},
		{"connection cut mid-frame (limit_data)", func(t testing.TB) {
			proxy.LimitData(t, 2000+rng.IntN(200_000))
			hold(2 * time.Second)
			proxy.Restore(t)
		}},
		{"black hole, found by heartbeat (8 s)", func(t testing.TB) { proxy.Blackhole(t); hold(8 * time.Second); proxy.Restore(t) }},
		{"broker unreachable (4 s)", func(t testing.TB) { proxy.Down(t); hold(4 * time.Second); proxy.Up(t) }},
		{"broker kill -9 + restart", func(t testing.TB) { node.Kill(t); hold(time.Second); node.Start(t) }},
		{"broker graceful restart", func(t testing.TB) { node.Restart(t) }},
		{"publisher SIGKILL + restart on its journal", func(t testing.TB) { c.killPublisher(pick()) }},
		{"consumer SIGKILL + restart on its store", func(t testing.TB) { c.killConsumer() }},
		{"publisher SIGKILL while the broker is unreachable", func(t testing.TB) {
			src := pick()
			proxy.Down(t)
			hold(time.Second)
			c.killPublisher(src) // restarts on its journal, still offline
			hold(2 * time.Second)
			proxy.Up(t)
		}},
		{"consumer SIGKILL during a black hole", func(t testing.TB) {
			proxy.Blackhole(t)
			hold(2 * time.Second)
			c.killConsumer() // its replacement dials into the black hole too
			hold(5 * time.Second)
			proxy.Restore(t)
		}},
		// Broker alarms while both sides run: publishers are blocked (connection.blocked), Publish
		// keeps journaling; consumers go on, and so does nothing else until it clears.
		{"memory alarm (5 s)", func(t testing.TB) {
			node.SetMemoryHighWatermark(t, 1e-7)
			hold(5 * time.Second)
			node.SetMemoryHighWatermark(t, 0.4)
		}},
		{"disk alarm (5 s)", func(t testing.TB) {
			node.Ctl(t, "set_disk_free_limit", "100000GB")
			hold(5 * time.Second)
			node.Ctl(t, "set_disk_free_limit", "50MB")
		}},
		// Two faults at once.
		{"broker kill -9 during a consumer SIGKILL", func(t testing.TB) {
			node.Kill(t)
			c.killConsumer() // its replacement finds no broker
			hold(time.Second)
			node.Start(t)
		}},
		{"black hole during a publisher restart", func(t testing.TB) {
			proxy.Blackhole(t)
			c.killPublisher(pick()) // restarts into the black hole, with its journal
			hold(4 * time.Second)
			proxy.Restore(t)
		}},
	}
	stats := runFaults(t, kinds, plan(kinds, p.perKind, rng), p.pause, rng, c.sleep)
	proxy.Restore(t)
	proxy.Up(t)

	c.finish(3*time.Minute + p.publishIn)
	h := c.history()
	res := history.Check(h)

	r := chaosReport{params: p, seed: seed, elapsed: time.Since(start), result: res, faults: stats, procs: c.processTable()}
	var b strings.Builder
	fmt.Fprintf(&b, "\nchaos run: %s queue, %d publishers x %d messages, %d faults, %v, seed %d\n\n",
		p.queueType, p.sources, p.perSource, len(kinds)*p.perKind, r.elapsed.Round(time.Second), seed)
	b.WriteString(res.Table().String() + "\n" + faultTable(stats).String() + "\n" + r.procs.String())
	r.text = b.String()
	t.Log(r.text)

	c.requireChaosVerdict(t, node.URL, res, p.sources*p.perSource)
	return r
}

// requireChaosVerdict fails t unless the run left nothing behind and kept the promise: the queue
// and its parking queue empty (read through url), no unparseable output, no process that died on
// its own, the exactly-once check passed, and at least want messages accepted.
func (c *cluster) requireChaosVerdict(t *testing.T, url string, res history.Result, want int) {
	t.Helper()
	if d := queueDepth(url, c.queue+".parked"); d != 0 {
		t.Errorf("parking queue holds %d messages (-1: could not tell)", d)
	}
	if d := queueDepth(url, c.queue); d != 0 {
		t.Errorf("queue still holds %d messages after the final consumer (-1: could not tell)", d)
	}
	c.mu.Lock()
	junk := c.junk
	c.mu.Unlock()
	if len(junk) > 0 {
		t.Errorf("%d unparseable output lines, first: %q", len(junk), junk[0])
	}
	for _, f := range c.failures {
		t.Errorf("a process died on its own: %s", f)
	}
	if !res.OK() {
		t.Errorf("exactly-once violated:\n%s", strings.Join(res.Samples, "\n"))
	}
	if res.Accepted < want {
		t.Errorf("only %d messages accepted, want at least %d", res.Accepted, want)
	}
}
