package integration

import (
	"cmp"
	"context"
	"fmt"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/rabbitkit/rabbitkit/internal/history"
	"github.com/rabbitkit/rabbitkit/protocol"
)

// cluster runs publisher processes (one per source) and a consumer process against url, restarts
// them as faults demand, and records everything they print. All its methods run on the test
// goroutine; only the line callbacks run elsewhere, and they touch only what mu guards.
type cluster struct {
	t         testing.TB
	dir       string // journals, stores, process logs
	bin       string
	url       string // what the processes dial (the proxy)
	consURL   string // what the consumers dial, when not url (a cluster's URLs in another order)
	exchange  string
	queue     string
	queueType string
	rate      float64 // per source, msgs/s
	streams   int
	gapGrace  time.Duration

	mu        sync.Mutex
	runs      []*pubRun
	gaps      []history.Gap
	conflicts []protocol.Stamp // the consumer's "conflict" lines
	junk      []string         // stdout lines that parse as nothing: a broken line format fails the test
	applied   []history.Applied

	sources    []*source
	cons       []*proc              // the consumer processes: one unless consumers > 1 (competing, with -pg)
	consumers  int                  // how many consumer processes run at once; default 1
	pg         string               // when set, consumers keep their state in this PostgreSQL (-pg) instead of -store
	pgDirect   string               // the DSN -dump reads (pg may go through a faulty proxy); default pg
	partitions int                  // > 0: route and consume topology.Partitions (<queue>.0..N-1) with consumer groups
	pgPub      []string             // when set, publishers run with these flags (-pg DSN ...) instead of -journal
	consStats  []map[string]float64 // per consumer run, its last "stats" line; guarded by mu
	consRuns   int
	consKills  int
	stopping   bool     // finish is stopping the consumer
	failures   []string // processes that died on their own
	// parkOK: publishers may park returned messages (a classic queue whose node is down): a run
	// that exits because it parked some is not a failure, and redriveParked re-drives them.
	parkOK     bool
	parkedMsgs []parkedMsg // the publishers' "message parked" lines; guarded by mu
}

// parkedMsg is one "message parked" line of a publisher run.
type parkedMsg struct {
	source, stream string
	seq            int64
}

// parkedRE takes stream and seq from a ParkedError in a publisher's "message parked" log line.
var parkedRE = regexp.MustCompile(`publisher: message (.+)/(\d+) to exchange `)

type source struct {
	name    string
	replica string   // tells apart in process names the sources that share a name (pgPub replicas)
	args    []string // extra flags of this source's runs, after the common ones (the last of a repeated flag wins)
	journal string
	target  int // messages this source must accept over all its runs
	cur     *pubRun
	runs    int
	kills   int
}

type pubRun struct {
	src       *source
	proc      *proc
	accepted  []protocol.Stamp   // guarded by cluster.mu
	confirmed int64              // -1 until "confirmed <n>"; guarded by cluster.mu
	stats     map[string]float64 // its last "stats" line; guarded by cluster.mu
	handled   bool               // its exit was looked at by poll
	parked    bool               // it exited because it parked messages (cluster.parkOK)
}

func newCluster(t testing.TB, url, queueType string, sources, perSource int) *cluster {
	t.Helper()
	c := &cluster{
		t: t, dir: t.TempDir(), bin: binaries(t), url: url, queueType: queueType,
		exchange: "rk-chaos-x", queue: "rk-chaos-q", streams: 2, gapGrace: time.Minute,
	}
	for i := range sources {
		name := fmt.Sprintf("src-%c", 'a'+i)
		c.sources = append(c.sources, &source{name: name, journal: filepath.Join(c.dir, name+".journal"), target: perSource})
	}
	return c
}

// accepted returns how many messages src's runs printed as accepted.
func (c *cluster) accepted(src *source) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := 0
	for _, r := range c.runs {
		if r.src == src {
			n += len(r.accepted)
		}
	}
	return n
}

// startPublisher starts a run of src publishing what it still owes.
func (c *cluster) startPublisher(src *source) {
	remaining := max(src.target-c.accepted(src), 0)
	src.runs++
	run := &pubRun{src: src, confirmed: -1}
	args := []string{
		"-url", c.url, "-source", src.name, "-exchange", c.exchange, "-routing-key", c.queue, "-queue", c.queue, "-queue-type", c.queueType,
		"-count", strconv.Itoa(remaining), "-rate", strconv.FormatFloat(c.rate, 'f', -1, 64),
		"-size", "256", "-streams", strconv.Itoa(c.streams), "-stats-every", "1s",
	}
	if c.pgPub != nil {
		args = append(args, c.pgPub...)
	} else {
		args = append(args, "-journal", src.journal)
	}
	args = append(args, src.args...)
	if c.partitions > 0 {
		args = append(args, "-partitions", strconv.Itoa(c.partitions))
	}
	run.proc = startProc(c.t, c.dir, procSpec{
		name: fmt.Sprintf("publisher-%s%s#%d", src.name, src.replica, src.runs), bin: filepath.Join(c.bin, "publisher"), args: args,
		onStdout: func(line string) { c.publisherLine(run, line) },
		onStderr: func(line string) {
			if st, ok := parseStats(line); ok {
				c.mu.Lock()
				run.stats = st
				c.mu.Unlock()
				return
			}
			if strings.Contains(line, `msg="message parked"`) {
				if m := parkedRE.FindStringSubmatch(line); m != nil {
					seq, _ := strconv.ParseInt(m[2], 10, 64)
					c.mu.Lock()
					c.parkedMsgs = append(c.parkedMsgs, parkedMsg{source: src.name, stream: m[1], seq: seq})
					c.mu.Unlock()
				}
			}
		},
	})
	c.mu.Lock()
	c.runs = append(c.runs, run)
	c.mu.Unlock()
	src.cur = run
}

func (c *cluster) publisherLine(run *pubRun, line string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if s, err := history.ParseAccepted(line); err == nil {
		run.accepted = append(run.accepted, s)
		return
	}
	if n, ok := strings.CutPrefix(line, "confirmed "); ok {
		if v, err := strconv.ParseInt(n, 10, 64); err == nil {
			run.confirmed = v
			return
		}
	}
	if strings.HasPrefix(line, "# partial line dropped") {
		return // a line cut by SIGKILL
	}
	c.junk = append(c.junk, run.proc.name+": "+line)
}

// startConsumer starts a consumer run; exitIdle > 0 makes it exit once the queue stays empty.
// storeArgs are the consumer flags naming its store: -pg DSN or -store FILE.
func (c *cluster) storeArgs(dsn string) []string {
	if c.pg != "" {
		return []string{"-pg", dsn}
	}
	return []string{"-store", filepath.Join(c.dir, "consumer.db")}
}

// startConsumers starts every consumer process (c.consumers, default 1).
func (c *cluster) startConsumers() {
	for i := range max(c.consumers, 1) {
		c.startConsumerAt(i, 0)
	}
}

// startConsumer starts (or restarts) the first consumer process.
func (c *cluster) startConsumer(exitIdle time.Duration) { c.startConsumerAt(0, exitIdle) }

// startConsumerAt starts (or restarts) consumer process i.
func (c *cluster) startConsumerAt(i int, exitIdle time.Duration) {
	c.consRuns++
	for len(c.cons) <= i {
		c.cons = append(c.cons, nil)
	}
	args := append([]string{
		"-url", cmp.Or(c.consURL, c.url), "-queue", c.queue, "-queue-type", c.queueType,
		"-gap-grace", c.gapGrace.String(), "-exit-idle", exitIdle.String(), "-stats-every", "1s",
	}, c.storeArgs(c.pg)...)
	if c.partitions > 0 {
		args = append(args, "-exchange", c.exchange, "-partitions", strconv.Itoa(c.partitions))
	}
	c.mu.Lock()
	run := len(c.consStats)
	c.consStats = append(c.consStats, nil)
	c.mu.Unlock()
	c.cons[i] = startProc(c.t, c.dir, procSpec{
		name: fmt.Sprintf("consumer#%d", c.consRuns), bin: filepath.Join(c.bin, "consumer"), args: args,
		onStderr: func(line string) {
			if st, ok := parseStats(line); ok {
				c.mu.Lock()
				c.consStats[run] = st
				c.mu.Unlock()
				return
			}
			switch {
			case strings.HasPrefix(line, "gap "):
				g, err := history.ParseGap(line)
				c.mu.Lock()
				defer c.mu.Unlock()
				if err != nil {
					c.junk = append(c.junk, "consumer: "+line)
					return
				}
				c.gaps = append(c.gaps, g)
			case strings.HasPrefix(line, "conflict "):
				s, err := history.ParseConflict(line)
				c.mu.Lock()
				defer c.mu.Unlock()
				if err != nil {
					c.junk = append(c.junk, "consumer: "+line)
					return
				}
				c.conflicts = append(c.conflicts, s)
			}
		},
	})
}

// poll restarts what died on its own and records why. Publishers that finished (exit 0 after
// "confirmed") are left alone.
func (c *cluster) poll() {
	for _, src := range c.sources {
		r := src.cur
		if r == nil || r.handled || !r.proc.exited() {
			continue
		}
		r.handled = true
		c.mu.Lock()
		confirmed := r.confirmed
		c.mu.Unlock()
		switch {
		case r.proc.wasKilled():
			c.startPublisher(src) // killed by a fault that did not restart it
		case c.parkOK && r.proc.waitErr != nil && strings.Contains(r.proc.stderrTail(), "messages parked"):
			r.parked = true // the operator re-drives them at the end (redriveParked)
			if c.accepted(src) < src.target {
				c.startPublisher(src)
			}
		case r.proc.waitErr != nil || confirmed < 0:
			c.failures = append(c.failures, r.proc.describe())
			c.startPublisher(src)
		case c.accepted(src) < src.target:
			c.startPublisher(src) // more was asked of it (a kill of a finished source)
		}
	}
	// Before finish, the consumer runs without -exit-idle: any exit we did not cause is a failure.
	for i, p := range c.cons {
		if !c.stopping && p != nil && p.exited() && !p.wasKilled() {
			c.failures = append(c.failures, p.describe())
			c.startConsumerAt(i, 0)
		}
	}
}

// sleep waits d while supervising the processes.
func (c *cluster) sleep(d time.Duration) {
	deadline := time.Now().Add(d)
	for {
		c.poll()
		left := time.Until(deadline)
		if left <= 0 {
			return
		}
		time.Sleep(min(left, 100*time.Millisecond))
	}
}

// running returns the sources whose current publisher is running.
func (c *cluster) running() []*source {
	var out []*source
	for _, s := range c.sources {
		if s.cur != nil && !s.cur.proc.exited() {
			out = append(out, s)
		}
	}
	return out
}

// killPublisher SIGKILLs src's publisher and starts it again on the same journal.
func (c *cluster) killPublisher(src *source) {
	if !src.cur.proc.exited() {
		src.cur.proc.kill()
		src.kills++
	}
	src.cur.handled = true
	c.startPublisher(src)
}

// killConsumer SIGKILLs the first consumer and starts it again on the same store.
func (c *cluster) killConsumer() { c.killConsumerAt(0) }

// killConsumerAt SIGKILLs consumer process i and starts it again on the same store.
func (c *cluster) killConsumerAt(i int) {
	c.cons[i].kill()
	c.consKills++
	c.startConsumerAt(i, 0)
}

// finish waits for every publisher to confirm everything, stops the consumer gracefully, drains
// the queue with a last consumer run and reads the ledger.
func (c *cluster) finish(timeout time.Duration) {
	t := c.t
	deadline := time.Now().Add(timeout)
	for {
		c.poll()
		done := true
		for _, s := range c.sources {
			if s.cur == nil || !s.cur.proc.exited() || c.accepted(s) < s.target {
				done = false
			}
		}
		if done {
			break
		}
		if time.Now().After(deadline) {
			var b strings.Builder
			for _, s := range c.sources {
				fmt.Fprintf(&b, "%s: accepted %d of %d; %s\n", s.name, c.accepted(s), s.target, s.cur.proc.describe())
			}
			t.Fatalf("publishers did not confirm everything within %v:\n%s", timeout, b.String())
		}
		time.Sleep(100 * time.Millisecond)
	}
	c.stopping = true
	// A consumer restarted by the last fault may still be in exec or the Go runtime's start-up,
	// before main installs its SIGTERM handler; a SIGTERM then kills any program. Let it start.
	for _, p := range c.cons {
		time.Sleep(time.Until(p.started.Add(time.Second)))
		if err := p.term(30 * time.Second); err != nil && !p.wasKilled() {
			c.failures = append(c.failures, "graceful stop: "+p.describe())
		}
	}
	idle := 5 * time.Second
	if c.partitions > 0 {
		// The last member takes the killed members' partitions only once their leases expired
		// (consumer.DefaultLeaseTTL): it must not give up before.
		idle = 25 * time.Second
	}
	c.startConsumer(idle)
	ctx, cancel := context.WithDeadline(context.Background(), deadline.Add(time.Minute))
	defer cancel()
	if err := c.cons[0].wait(ctx); err != nil {
		t.Fatalf("final consumer: %v\n%s", err, c.cons[0].describe())
	}
	c.dump()
}

// dump reads the ledger with consumer -dump.
func (c *cluster) dump() {
	t := c.t
	var bad []string
	p := startProc(t, c.dir, procSpec{
		name: "consumer-dump", bin: filepath.Join(c.bin, "consumer"),
		args: append([]string{"-dump"}, c.storeArgs(cmp.Or(c.pgDirect, c.pg))...),
		onStdout: func(line string) {
			a, err := history.ParseApplied(line)
			c.mu.Lock()
			defer c.mu.Unlock()
			if err != nil {
				bad = append(bad, line)
				return
			}
			c.applied = append(c.applied, a)
		},
	})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := p.wait(ctx); err != nil {
		t.Fatalf("consumer -dump: %v\n%s", err, p.describe())
	}
	if len(bad) > 0 {
		t.Fatalf("consumer -dump printed %d malformed lines, first: %q", len(bad), bad[0])
	}
}

// history assembles what was recorded for the checker.
func (c *cluster) history() history.History {
	c.mu.Lock()
	defer c.mu.Unlock()
	h := history.History{Ledger: c.applied, Gaps: c.gaps, Conflicts: c.conflicts}
	for _, r := range c.runs {
		h.Runs = append(h.Runs, history.Run{Source: r.src.name, Killed: r.proc.wasKilled(), Accepted: r.accepted})
	}
	// The parked lines name stream and seq; the accepted lines give the epoch.
	if len(c.parkedMsgs) > 0 {
		byMsg := map[parkedMsg]protocol.Stamp{}
		for _, r := range c.runs {
			for _, st := range r.accepted {
				byMsg[parkedMsg{source: st.Source, stream: st.Stream, seq: st.Seq}] = st
			}
		}
		for _, m := range c.parkedMsgs {
			if st, ok := byMsg[m]; ok {
				h.Redriven = append(h.Redriven, st)
			}
		}
	}
	return h
}

// processTable summarises the process runs. The counters come from each run's last "stats" line
// (printed every second): a SIGKILLed run's last second is missing from them.
func (c *cluster) processTable() history.Table {
	c.mu.Lock()
	defer c.mu.Unlock()
	f := func(v float64) string { return strconv.FormatFloat(v, 'f', 0, 64) }
	tb := history.Table{Header: []string{"process", "runs", "SIGKILLed", "accepted lines", "confirmed", "resent", "duplicates dropped", "redelivered", "reconnects"}}
	for _, s := range c.sources {
		sum := map[string]float64{}
		accepted := 0
		for _, r := range c.runs {
			if r.src == s {
				accepted += len(r.accepted)
				for k, v := range r.stats {
					sum[k] += v
				}
			}
		}
		tb.Rows = append(tb.Rows, []string{"publisher " + s.name, strconv.Itoa(s.runs), strconv.Itoa(s.kills), strconv.Itoa(accepted),
			f(sum["confirmed"]), f(sum["resent"]), "", "", f(sum["reconnects"])})
	}
	sum := map[string]float64{}
	for _, st := range c.consStats {
		for k, v := range st {
			sum[k] += v
		}
	}
	tb.Rows = append(tb.Rows, []string{"consumer", strconv.Itoa(c.consRuns), strconv.Itoa(c.consKills), "", "", "",
		f(sum["duplicates"]), f(sum["redeliveries"]), f(sum["reconnects"])})
	return tb
}

// parseStats parses "stats k=v k=v ..." as printed by the example binaries with -stats-every.
func parseStats(line string) (map[string]float64, bool) {
	rest, ok := strings.CutPrefix(line, "stats ")
	if !ok {
		return nil, false
	}
	out := map[string]float64{}
	for _, kv := range strings.Fields(rest) {
		k, v, ok := strings.Cut(kv, "=")
		if !ok {
			return nil, false
		}
		n, err := strconv.ParseFloat(v, 64)
		if err != nil {
			return nil, false
		}
		out[k] = n
	}
	return out, true
}

// queueDepth returns the ready messages of queue on the broker at url (-1 if it cannot tell).
func queueDepth(url, queue string) int {
	conn, err := amqp.DialConfig(url, amqp.Config{Dial: amqp.DefaultDial(5 * time.Second)})
	if err != nil {
		return -1
	}
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		return -1
	}
	defer ch.Close()
	q, err := ch.QueueDeclarePassive(queue, true, false, false, false, nil)
	if err != nil {
		return -1
	}
	return q.Messages
}
