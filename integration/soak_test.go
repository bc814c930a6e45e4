//go:build soak

package integration

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/rabbitkit/rabbitkit/topology"
)

// TestSoak is the long chaos run of `make soak`: by default one million messages (half into a
// classic queue, half into a quorum queue), each of the 11 fault kinds injected 12 times per queue
// type (264 faults). It writes its tables and the command that produced them to docs/RELIABILITY.md.
//
// RABBITKIT_SOAK_MESSAGES (total over both queue types) and RABBITKIT_SOAK_FAULTS_PER_KIND scale
// it down or up; the document states the numbers actually run.
func TestSoak(t *testing.T) {
	total := envInt(t, "RABBITKIT_SOAK_MESSAGES", 1_000_000)
	perKind := envInt(t, "RABBITKIT_SOAK_FAULTS_PER_KIND", 12)
	const sources = 4
	perSource := total / 2 / sources
	// Publishing should span the fault schedule: about 70 s per round of the 11 fault kinds.
	publishIn := time.Duration(perKind) * 70 * time.Second

	var reports []chaosReport
	for _, qt := range []string{topology.Classic, topology.Quorum} {
		t.Run(qt, func(t *testing.T) {
			reports = append(reports, runChaos(t, chaosParams{
				queueType: qt, sources: sources, perSource: perSource,
				publishIn: publishIn, perKind: perKind, pause: 2 * time.Second,
			}))
		})
	}
	writeReliability(t, total, perKind, reports)
}

func envInt(t *testing.T, name string, def int) int {
	s := os.Getenv(name)
	if s == "" {
		return def
	}
	v, err := strconv.Atoi(s)
	if err != nil || v <= 0 {
		t.Fatalf("%s=%q: want a positive integer", name, s)
	}
	return v
}

// writeReliability writes docs/RELIABILITY.md from the runs' reports.
func writeReliability(t *testing.T, total, perKind int, reports []chaosReport) {
	var b strings.Builder
	cmd := "make soak"
	if total != 1_000_000 || perKind != 12 {
		cmd = fmt.Sprintf("RABBITKIT_SOAK_MESSAGES=%d RABBITKIT_SOAK_FAULTS_PER_KIND=%d make soak", total, perKind)
	}
	b.WriteString("# Reliability: the chaos soak\n\n")
	b.WriteString("This file is written by `TestSoak` (integration/soak_test.go). Do not edit it by hand: run the\n")
	b.WriteString("command below and commit what it writes.\n\n")
	fmt.Fprintf(&b, "```sh\n%s\n```\n\n", cmd)
	b.WriteString("## Every soak, last run\n\n" + summaryBegin + "\n" + summaryEnd + "\n\n## This soak\n\n")
	if total != 1_000_000 || perKind != 12 {
		fmt.Fprintf(&b, "**This is a scaled-down run** (%d messages, each fault kind %d times per queue type), not the\n", total, perKind)
		b.WriteString("full soak of one million messages and 264 faults that plain `make soak` runs.\n\n")
	}
	b.WriteString("What it does: a private RabbitMQ node (own node name, ports and data folder) behind an in-process\n")
	b.WriteString("toxiproxy; four `examples/publisher` processes (four sources, each with its own journal, two\n")
	b.WriteString("streams each) and one `examples/consumer` process (transactional ledger handler). Faults are injected\n")
	b.WriteString("one at a time in a shuffled order while they run. Publishers killed with SIGKILL are restarted on\n")
	b.WriteString("the same journal, the consumer on the same store. At the end every publisher runs until all it\n")
	b.WriteString("journaled is confirmed, the consumer drains the queue, and its ledger is compared with the\n")
	b.WriteString("publishers' `accepted` lines (internal/history.Check, a Jepsen-style total-queue check).\n\n")
	fmt.Fprintf(&b, "Measured %s with binaries built at commit %s, on %s, %d CPUs (shared with other work), %s, RabbitMQ %s.\n\n",
		time.Now().UTC().Format("2006-01-02 15:04 MST"), buildCommit, hostDesc(), runtime.NumCPU(), runtime.Version(), rabbitVersion())
	b.WriteString("The process table's counters come from each run's last `stats` line (printed every second), so a\n")
	b.WriteString("SIGKILLed run's last second is missing from them; the check table is exact.\n\n")
	for _, r := range reports {
		b.WriteString("## " + r.params.queueType + " queue\n")
		verdict := "PASS"
		if !r.result.OK() {
			verdict = "FAIL"
		}
		fmt.Fprintf(&b, "\n%s: %d publishers x %d messages, %d faults, %v, chaos seed %d.\n\n",
			verdict, r.params.sources, r.params.perSource, faultsIn(r.faults), r.elapsed.Round(time.Second), r.seed)
		b.WriteString(r.result.Table().String() + "\n" + faultTable(r.faults).String() + "\n" + r.procs.String() + "\n")
	}
	path := filepath.Join("..", "docs", "RELIABILITY.md")
	if err := os.WriteFile(path, []byte(b.String()), 0o644); err != nil {
		t.Fatalf("write %s: %v", path, err)
	}
	writeSoakSummary(t)
	t.Logf("wrote %s", path)
}

func faultsIn(stats []faultStat) int {
	n := 0
	for _, s := range stats {
		n += s.count
	}
	return n
}

func hostDesc() string {
	b, err := os.ReadFile("/proc/cpuinfo")
	if err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if name, ok := strings.CutPrefix(l, "model name"); ok {
				return strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(name), ":"))
			}
		}
	}
	return runtime.GOOS + "/" + runtime.GOARCH
}

func rabbitVersion() string {
	out, err := exec.Command("dpkg-query", "-W", "-f=${Version}", "rabbitmq-server").Output()
	if err != nil || len(out) == 0 {
		return "(unknown version)"
	}
	return string(out)
}
