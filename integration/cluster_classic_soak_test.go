//go:build soak

package integration

import (
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/rabbitkit/rabbitkit/internal/history"
	"github.com/rabbitkit/rabbitkit/internal/testbroker"
	"github.com/rabbitkit/rabbitkit/topology"
)

// TestSoakClusterClassic is the cluster soak with a classic queue, under `make soak`: rounds of
// three node kills in a shuffled order (the node the queue lives on, the publisher's node, the
// consumer's node), each node down for a few seconds and restarted, while two publishers and a
// consumer run. A classic queue lives on one node and does not move: while that node is down the
// queue is unavailable, a publisher connected elsewhere gets its mandatory messages returned and
// parks them, a publisher or consumer that reconnects cannot declare the queue and waits. After
// the faults the operator's step runs: `rabbitkit journal redrive <journal> all` for every
// publisher that parked, and a run that sends them. The verdict: nothing lost, nothing applied
// twice; the gaps the consumer reported over the parked messages were filled by the re-drive, late.
// It writes its section of docs/RELIABILITY-CLUSTER.md. RABBITKIT_SOAK_CLUSTER_ROUNDS scales it.
func TestSoakClusterClassic(t *testing.T) {
	rounds := envInt(t, "RABBITKIT_SOAK_CLUSTER_ROUNDS", 10)
	report, ok := runClusterClassic(t, clusterParams{
		nodes: 3, sources: 2, perSource: 4000 * rounds,
		publishIn: time.Duration(rounds) * 3 * 20 * time.Second,
		rounds:    rounds, shuffle: true, pause: 2 * time.Second,
	})
	writeClassicReliability(t, rounds, report, ok)
}

// runClusterClassic runs the classic-queue cluster soak of p and returns its report and whether
// the check passed.
func runClusterClassic(t *testing.T, p clusterParams) (report string, ok bool) {
	start := time.Now()
	seed := rand.Uint64()
	t.Logf("cluster seed %d", seed)
	rng := rand.New(rand.NewPCG(seed, 0xc1a5))
	_ = binaries(t)
	cl := testbroker.StartCluster(t, p.nodes, testbroker.WithErlArgs(testbroker.NoBusyWait))
	clusterUp := time.Since(start)
	urls := cl.URLs()
	const home = 1 // the node the queue lives on
	c := newCluster(t, strings.Join(urls, ","), topology.Classic, p.sources, p.perSource)
	c.consURL = strings.Join(append(slices.Clone(urls[p.nodes-1:]), urls[:p.nodes-1]...), ",")
	c.exchange = testbroker.Name(t, "classic-x")
	c.queue = testbroker.Name(t, "classic-q")
	c.rate = float64(p.perSource) / p.publishIn.Seconds()
	c.parkOK = true
	declareClassicVia(t, urls[home], c.exchange, c.queue)

	c.startConsumer(0)
	for _, s := range c.sources {
		c.startPublisher(s)
	}
	c.sleep(3 * time.Second)
	d := &clusterDriver{cl: cl, c: c, perSource: p.perSource}
	var hits []clusterFault
	killRestart := func(kind string, pick func(pub, cons int) int) func(testing.TB) {
		return func(t testing.TB) {
			t0 := time.Now()
			var f clusterFault
			for {
				d.ensurePublishing()
				f.pub, f.cons = d.where(t)
				f.leader = home
				if f.node = pick(f.pub, f.cons); f.node >= 0 {
					break
				}
				if time.Since(t0) > time.Minute {
					// With the queue's node just back, clients may still be in their backoff: a
					// client that is not connected cannot be hit where it is; take the home node.
					f.node = home
					break
				}
				c.sleep(500 * time.Millisecond)
			}
			f.kind = kind
			cl.Node(f.node).Kill(t)
			c.sleep(5 * time.Second) // down: on the home node, returns and parked messages pile up
			t2 := time.Now()
			cl.Node(f.node).Start(t)
			cl.WaitRunning(t, 2*time.Minute)
			f.restartedIn = time.Since(t2)
			f.leaderAfter = home
			f.took = time.Since(t0)
			hits = append(hits, f)
		}
	}
	kinds := []fault{
		{"kill -9 the queue's node + restart", killRestart("queue's node", func(_, _ int) int { return home })},
		{"kill -9 the publisher's node + restart", killRestart("publisher's node", func(pub, _ int) int { return pub })},
		{"kill -9 the consumer's node + restart", killRestart("consumer's node", func(_, cons int) int { return cons })},
	}
	steps := p.steps(kinds, rng)
	faultsStart := time.Now()
	stats := runFaults(t, kinds, steps, p.pause, rng, c.sleep)
	faultsTook := time.Since(faultsStart)

	redriven := c.redriveParked(3*time.Minute + p.publishIn)
	c.finish(3 * time.Minute)
	res := history.Check(c.history())

	c.mu.Lock()
	parked := len(c.parkedMsgs)
	c.mu.Unlock()
	var b strings.Builder
	fmt.Fprintf(&b, "\ncluster run: %d nodes, classic queue on node %d, %d publishers x %d messages, %d faults, %v (cluster up in %v, faults %v), seed %d\n\n",
		p.nodes, home, p.sources, p.perSource, len(steps), time.Since(start).Round(time.Second), clusterUp.Round(100*time.Millisecond),
		faultsTook.Round(100*time.Millisecond), seed)
	b.WriteString(res.Table().String() + "\n" + faultTable(stats).String() + "\n" + classicHitTable(hits).String() + "\n" + c.processTable().String())
	fmt.Fprintf(&b, "\nparked by the publishers (returned: the queue's node was down): %d; re-driven by the operator step: %d\n", parked, redriven)
	b.WriteString(unknownLine(c))
	t.Log(b.String())
	if parked != redriven {
		t.Errorf("%d parked lines, %d entries re-driven", parked, redriven)
	}
	c.requireChaosVerdict(t, urls[0], res, p.sources*p.perSource)
	return b.String(), res.OK() && !t.Failed()
}

// classicHitTable lists what each fault of the classic run hit.
func classicHitTable(hits []clusterFault) history.Table {
	tb := history.Table{Header: []string{"fault", "node killed", "publisher src-a on", "consumer on", "node back in", "fault took"}}
	d := func(v time.Duration) string { return v.Round(100 * time.Millisecond).String() }
	for _, h := range hits {
		tb.Rows = append(tb.Rows, []string{h.kind, strconv.Itoa(h.node), strconv.Itoa(h.pub), strconv.Itoa(h.cons), d(h.restartedIn), d(h.took)})
	}
	return tb
}

// redrivenRE reads the count from `rabbitkit journal redrive`'s answer.
var redrivenRE = regexp.MustCompile(`re-driven (\d+) parked entries`)

// redriveParked is the operator's step after faults that made publishers park returned messages:
// once every publisher has exited, each whose last run exited because it parked some gets
// `rabbitkit journal redrive <journal> all` and a run that sends what its journal holds
// (-count 0); repeated while runs still park, at most three times. It returns how many entries
// were re-driven.
func (c *cluster) redriveParked(timeout time.Duration) (redriven int) {
	t := c.t
	deadline := time.Now().Add(timeout)
	for range 3 {
		for {
			c.poll()
			if len(c.running()) == 0 {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("publishers still running %v after the faults, before the re-drive", timeout)
			}
			time.Sleep(100 * time.Millisecond)
		}
		again := false
		for _, s := range c.sources {
			if s.cur == nil || !s.cur.parked {
				continue
			}
			out, err := exec.Command(filepath.Join(c.bin, "rabbitkit"), "journal", "redrive", s.journal, "all").CombinedOutput()
			if err != nil {
				t.Fatalf("rabbitkit journal redrive %s all: %v\n%s", s.journal, err, out)
			}
			if m := redrivenRE.FindStringSubmatch(string(out)); m != nil {
				n, _ := strconv.Atoi(m[1])
				redriven += n
			}
			t.Logf("%s: rabbitkit journal redrive all: %s", s.name, strings.TrimSpace(string(out)))
			c.startPublisher(s)
			again = true
		}
		if !again {
			return redriven
		}
	}
	t.Fatalf("publishers still parked messages after three re-drives")
	return redriven
}

const classicHeading = "## classic queue: "

// writeClassicReliability replaces the classic queue's section of docs/RELIABILITY-CLUSTER.md
// (from its heading to the end; the quorum soak's part stays) with this run's.
func writeClassicReliability(t *testing.T, rounds int, report string, ok bool) {
	path := "../docs/RELIABILITY-CLUSTER.md"
	cur, err := os.ReadFile(path)
	if err != nil {
		t.Errorf("read %s: %v", path, err)
		return
	}
	s := string(cur)
	if i := strings.Index(s, classicHeading); i >= 0 {
		s = s[:i]
	} else if i := strings.Index(s, "## classic queues"); i >= 0 {
		s = s[:i]
	}
	var b strings.Builder
	b.WriteString(s)
	verdict := "PASS"
	if !ok {
		verdict = "FAIL"
	}
	b.WriteString(classicSection(rounds, verdict, report))
	if err := os.WriteFile(path, []byte(b.String()), 0o644); err != nil {
		t.Errorf("write %s: %v", path, err)
	}
	writeSoakSummary(t)
}

// classicSection is the classic queue's part of docs/RELIABILITY-CLUSTER.md.
func classicSection(rounds int, verdict, report string) string {
	var b strings.Builder
	b.WriteString(classicHeading + verdict + "\n\n")
	cmd := "make soak"
	if rounds != 10 {
		cmd = fmt.Sprintf("RABBITKIT_SOAK_CLUSTER_ROUNDS=%d go test -race=false -count=1 -timeout 2h -tags soak -run TestSoakClusterClassic -v ./integration/", rounds)
		fmt.Fprintf(&b, "**This is a scaled-down run** (%d rounds of the three node kills), not the default 10.\n\n", rounds)
	}
	fmt.Fprintf(&b, "Written by `TestSoakClusterClassic` (integration/cluster_classic_soak_test.go): `%s`.\n", cmd)
	fmt.Fprintf(&b, "Measured %s with binaries built at commit %s, on %s, %d CPUs (shared with other work), %s, RabbitMQ %s.\n\n",
		time.Now().UTC().Format("2006-01-02 15:04 MST"), buildCommit, hostDesc(), runtime.NumCPU(), runtime.Version(), rabbitVersion())
	b.WriteString("The same cluster, publishers and consumer, with a classic queue declared through node 1, where it\n")
	b.WriteString("lives. Rounds of three faults in a shuffled order: kill -9 of the queue's node, of the node the\n")
	b.WriteString("publisher is connected to and of the consumer's node, each down 5 s and restarted. What happens,\n")
	b.WriteString("and why: a classic queue does not move. While its node is down the queue is unavailable through\n")
	b.WriteString("every other node (declare, consume and get answer 404); a publisher connected elsewhere gets its\n")
	b.WriteString("mandatory messages returned and parks them (`message parked` at ERROR, `rabbitkit_publisher_parked_total`);\n")
	b.WriteString("a publisher or consumer that reconnects meanwhile cannot declare the queue and retries; the consumer\n")
	b.WriteString("reports the parked messages' sequence numbers as a gap once its grace passes. Nothing is lost:\n")
	b.WriteString("after the faults the operator re-drives every journal (`rabbitkit journal redrive <journal> all`,\n")
	b.WriteString("the publisher stopped), the next run sends them, and the consumer applies them once each, late,\n")
	b.WriteString("out of their stream's order. That is the cost of a classic queue on a cluster: availability and\n")
	b.WriteString("order depend on one node, and an operator's step. A quorum queue (above) replicates to a majority\n")
	b.WriteString("and elects a new leader: nothing is returned, nothing parked, no step (docs/OPERATIONS.md,\n")
	b.WriteString("\"Running on a cluster\"). `TestClusterClassicQueueOnDeadNode` (in `make test`) shows the broker's\n")
	b.WriteString("answers one by one, and that a message published without mandatory is acked and dropped.\n")
	b.WriteString(report)
	return b.String()
}
