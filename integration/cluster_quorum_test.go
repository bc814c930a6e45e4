package integration

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/rabbitkit/rabbitkit/internal/history"
	"github.com/rabbitkit/rabbitkit/internal/testbroker"
	"github.com/rabbitkit/rabbitkit/topology"
)

// clusterParams sizes a run against a RabbitMQ cluster.
type clusterParams struct {
	nodes     int
	sources   int           // publisher processes
	perSource int           // messages each source must get accepted
	publishIn time.Duration // the publishers' rate is set so that publishing takes about this long
	rounds    int           // each fault kind is injected this many times
	shuffle   bool          // shuffle the kinds (plan); else they run in order, round after round
	pause     time.Duration // mean quiet time between two faults
}

// TestClusterQuorum is the short cluster run of `make test`: three private nodes joined into one
// cluster, a quorum queue, two publisher processes and a consumer process given every node's URL.
// It kills -9 the node leading the queue (at first no client is connected to it: a leader change
// alone), the node the publisher is connected to and the node the consumer is connected to,
// restarting each before the next, then checks that every accepted
// message was applied exactly once and none was lost.
func TestClusterQuorum(t *testing.T) {
	if testing.Short() {
		t.Skip("cluster run: starts three RabbitMQ nodes and takes about two minutes")
	}
	runClusterQuorum(t, clusterParams{
		nodes: 3, sources: 2, perSource: 6000, publishIn: 40 * time.Second, rounds: 1, pause: 2 * time.Second,
	})
}

// steps returns the run's faults: p.rounds of kinds, shuffled or in order.
func (p clusterParams) steps(kinds []fault, rng *rand.Rand) []fault {
	if p.shuffle {
		return plan(kinds, p.rounds, rng)
	}
	var steps []fault
	for range p.rounds {
		steps = append(steps, kinds...)
	}
	return steps
}

// clusterDriver is what the cluster runs share: where the clients are, and work for publishers
// that finished, so that a kill always hits publishers with confirms outstanding.
type clusterDriver struct {
	cl        *testbroker.Cluster
	c         *cluster
	perSource int
}

// The client-provided connection names of the example binaries (the publisher's ends in its
// source).
const consName = "rabbitkit-example-consumer"

func pubConnName(source string) string { return "rabbitkit-publisher " + source }

// ensurePublishing gives every source that has finished more work.
func (d *clusterDriver) ensurePublishing() {
	extended := false
	for _, s := range d.c.sources {
		if s.cur.proc.exited() {
			s.target += d.perSource / 4
			d.c.startPublisher(s)
			extended = true
		}
	}
	if extended {
		d.c.sleep(2 * time.Second)
	}
}

// where returns the nodes that the first source's publisher and the consumer are connected to
// (-1: not connected).
func (d *clusterDriver) where(t testing.TB) (pub, cons int) {
	pub, cons = -1, -1
	pubName := pubConnName(d.c.sources[0].name)
	for _, cn := range d.cl.Connections(t) {
		switch {
		case strings.HasPrefix(cn.Name, pubName) && pub < 0:
			pub = cn.Node
		case strings.HasPrefix(cn.Name, consName) && cons < 0:
			cons = cn.Node
		}
	}
	return pub, cons
}

// clusterFault is what one injected fault hit.
type clusterFault struct {
	kind              string
	node              int // the node killed
	pub, cons, leader int // where publisher src-a and the consumer were connected, and the leader, at the kill
	leaderAfter       int
	electedIn         time.Duration // kill until list_queues names a leader on a running node
	restartedIn       time.Duration // Start until the queue lists every member online again
	took              time.Duration // the whole fault, rabbitmqctl calls included
}

// runClusterQuorum runs the cluster fault run of p and returns its report (markdown tables) and
// whether the history check passed; the test fails on a bad verdict either way.
func runClusterQuorum(t *testing.T, p clusterParams) (report string, ok bool) {
	start := time.Now()
	seed := rand.Uint64()
	t.Logf("cluster seed %d", seed)
	rng := rand.New(rand.NewPCG(seed, 0xc105))

	bin := binaries(t) // before the nodes: a build failure should not wait for a cluster
	_ = bin
	cl := testbroker.StartCluster(t, p.nodes, testbroker.WithErlArgs(testbroker.NoBusyWait))
	clusterUp := time.Since(start)
	urls := cl.URLs()
	// The publishers try node 0 first, the consumer node n-1, and the queue is declared through node
	// 1, which then leads it: at the start each fault kind hits a different node.
	c := newCluster(t, strings.Join(urls, ","), topology.Quorum, p.sources, p.perSource)
	c.consURL = strings.Join(append(slices.Clone(urls[p.nodes-1:]), urls[:p.nodes-1]...), ",")
	c.exchange = testbroker.Name(t, "cluster-x")
	c.queue = testbroker.Name(t, "cluster-q")
	c.rate = float64(p.perSource) / p.publishIn.Seconds()
	declareVia(t, urls[1], c.exchange, c.queue)
	if l := cl.QueueLeader(t, c.queue); l != 1 {
		t.Logf("queue declared through node 1 is led by node %d", l)
	}

	c.startConsumer(0)
	for _, s := range c.sources {
		c.startPublisher(s)
	}
	c.sleep(3 * time.Second) // let both sides connect and traffic flow
	d := &clusterDriver{cl: cl, c: c, perSource: p.perSource}

	var hits []clusterFault
	// Each rabbitmqctl call costs about a second here (more under load): one list_connections and
	// one list_queues tell where everything is.
	where := func() (pub, cons, leader int) {
		pub, cons = d.where(t)
		return pub, cons, cl.QueueLeader(t, c.queue)
	}
	killRestart := func(kind string, pick func(pub, cons, leader int) int) func(testing.TB) {
		return func(t testing.TB) {
			t0 := time.Now()
			var f clusterFault
			for {
				// Inside the loop: a publisher that was still running when the last look was taken
				// may have finished since, and a finished publisher has no connection to find (CI
				// once waited a minute here for one that had exited).
				d.ensurePublishing()
				f.pub, f.cons, f.leader = where()
				if f.node = pick(f.pub, f.cons, f.leader); f.node >= 0 {
					break
				}
				if time.Since(t0) > time.Minute {
					t.Fatalf("%s: no target within a minute (publisher on %d, consumer on %d, leader %d)", kind, f.pub, f.cons, f.leader)
				}
				c.sleep(500 * time.Millisecond) // reconnecting after the last fault
			}
			f.kind = kind
			t1 := time.Now()
			cl.Node(f.node).Kill(t)
			f.leaderAfter = cl.WaitQueueLeader(t, c.queue, time.Minute)
			f.electedIn = time.Since(t1)
			c.sleep(time.Second)
			t2 := time.Now()
			cl.Node(f.node).Start(t)
			cl.WaitQueueMembers(t, c.queue, time.Minute)
			f.restartedIn = time.Since(t2)
			f.took = time.Since(t0)
			hits = append(hits, f)
		}
	}
	kinds := []fault{
		{"kill -9 the queue leader's node + restart", killRestart("queue leader", func(_, _, leader int) int { return leader })},
		{"kill -9 the publisher's node + restart", killRestart("publisher's node", func(pub, _, _ int) int { return pub })},
		{"kill -9 the consumer's node + restart", killRestart("consumer's node", func(_, cons, _ int) int { return cons })},
	}
	steps := p.steps(kinds, rng)
	faultsStart := time.Now()
	stats := runFaults(t, kinds, steps, p.pause, rng, c.sleep)
	faultsTook := time.Since(faultsStart)

	c.finish(3*time.Minute + p.publishIn)
	res := history.Check(c.history())

	var b strings.Builder
	fmt.Fprintf(&b, "\ncluster run: %d nodes, quorum queue, %d publishers x %d messages, %d faults, %v (cluster up in %v, faults %v), seed %d\n\n",
		p.nodes, p.sources, p.perSource, len(steps), time.Since(start).Round(time.Second), clusterUp.Round(100*time.Millisecond),
		faultsTook.Round(100*time.Millisecond), seed)
	b.WriteString(res.Table().String() + "\n" + faultTable(stats).String() + "\n" + hitTable(hits).String() + "\n" + c.processTable().String())
	b.WriteString("\n" + unknownLine(c))
	t.Log(b.String())

	live := urls[0]
	c.requireChaosVerdict(t, live, res, p.sources*p.perSource)
	return b.String(), res.OK() && !t.Failed()
}

// declareVia declares what the examples declare (exchange, quorum queue, binding, the consumer's
// classic parking queue) through the node at url, so that the quorum queue is led from there and
// the parking queue lives there. The same topology package builds the arguments, so the examples'
// own declarations match them.
func declareVia(t *testing.T, url, exchange, queue string) {
	t.Helper()
	conn, err := amqp.Dial(url)
	if err != nil {
		t.Fatalf("dial %s: %v", url, err)
	}
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		t.Fatalf("channel: %v", err)
	}
	topo := topology.Topology{
		Exchanges: []topology.Exchange{{Name: exchange}},
		Queues:    []topology.Queue{{Name: queue, Type: topology.Quorum}, {Name: queue + ".parked"}},
		Bindings:  []topology.Binding{{Queue: queue, Exchange: exchange, Key: queue}},
	}
	if err := topo.Declare(ch); err != nil {
		t.Fatalf("declare: %v", err)
	}
}

// hitTable lists what each fault hit.
func hitTable(hits []clusterFault) history.Table {
	tb := history.Table{Header: []string{"fault", "node killed", "publisher src-a on", "consumer on", "leader", "new leader", "elected in", "node back in", "fault took"}}
	d := func(v time.Duration) string { return v.Round(100 * time.Millisecond).String() }
	for _, h := range hits {
		tb.Rows = append(tb.Rows, []string{h.kind, strconv.Itoa(h.node), strconv.Itoa(h.pub), strconv.Itoa(h.cons), strconv.Itoa(h.leader),
			strconv.Itoa(h.leaderAfter), d(h.electedIn), d(h.restartedIn), d(h.took)})
	}
	return tb
}

// unknownLine sums the publishers' "unknown" counter: confirms whose outcome the connection loss
// left unknown, which the publisher resends.
func unknownLine(c *cluster) string {
	c.mu.Lock()
	defer c.mu.Unlock()
	var unknown, resent float64
	for _, r := range c.runs {
		unknown += r.stats["unknown"]
		resent += r.stats["resent"]
	}
	return fmt.Sprintf("publishers: %.0f confirms left unknown by a lost connection, %.0f messages resent\n", unknown, resent)
}
