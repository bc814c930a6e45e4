//go:build soak

package integration

import (
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"
)

// TestSoakPG is the PostgreSQL inbox's long chaos run of `make soak`: three competing consumer
// processes on a private PostgreSQL server (crashed and restarted among the faults) and the shared
// broker, by default 200,000 messages from four publishers over ten minutes of faults. It writes
// docs/RELIABILITY-PG.md. RABBITKIT_SOAK_PG_MESSAGES and RABBITKIT_SOAK_PG_MINUTES scale it.
func TestSoakPG(t *testing.T) {
	total := envInt(t, "RABBITKIT_SOAK_PG_MESSAGES", 200_000)
	minutes := envInt(t, "RABBITKIT_SOAK_PG_MINUTES", 10)
	const sources = 4
	faultsFor := time.Duration(minutes) * time.Minute
	p := pgChaosParams{
		sources: sources, perSource: total / sources, consumers: 3, faultsFor: faultsFor, restarts: true,
		rate: float64(total/sources) / (faultsFor.Seconds() + 30),
	}
	r := runPGChaos(t, p)

	var b strings.Builder
	cmd := "make soak"
	if total != 200_000 || minutes != 10 {
		cmd = fmt.Sprintf("RABBITKIT_SOAK_PG_MESSAGES=%d RABBITKIT_SOAK_PG_MINUTES=%d make soak", total, minutes)
	}
	b.WriteString("# Reliability: the PostgreSQL inbox under chaos\n\n")
	b.WriteString("This file is written by `TestSoakPG` (integration/soak_pg_test.go). Do not edit it by hand: run\n")
	fmt.Fprintf(&b, "the command below and commit what it writes.\n\n```sh\n%s\n```\n\n", cmd)
	if total != 200_000 || minutes != 10 {
		fmt.Fprintf(&b, "**This is a scaled-down run** (%d messages, %d minutes of faults), not the default soak.\n\n", total, minutes)
	}
	b.WriteString("What it does: four `examples/publisher` processes publish to the shared broker through a\n")
	b.WriteString("toxiproxy; three `examples/consumer -pg` processes compete on one queue, sharing one inbox in\n")
	b.WriteString("a private PostgreSQL server (initdb in a temp dir, own port) reached through a second toxiproxy;\n")
	b.WriteString("the handler inserts one ledger row per message, with no unique constraint. Faults, one at a\n")
	b.WriteString("time in a random order: consumer SIGKILLs, PostgreSQL connections cut, reset or unreachable,\n")
	b.WriteString("PostgreSQL crashed (immediate stop) or shut down and restarted, broker connections cut. At the\n")
	b.WriteString("end the ledger's rows per stamp are compared with the publishers' `accepted` lines.\n\n")
	fmt.Fprintf(&b, "Measured %s with binaries built at commit %s, on %s, %d CPUs (shared with other work), %s.\n\n",
		time.Now().UTC().Format("2006-01-02 15:04 MST"), buildCommit, hostDesc(), runtime.NumCPU(), runtime.Version())
	verdict := "PASS"
	if !r.result.OK() {
		verdict = "FAIL"
	}
	n := 0
	for _, c := range r.faults {
		n += c
	}
	fmt.Fprintf(&b, "%s: %d publishers x %d messages, 3 competing consumers, %d faults, %v, fault seed %d.\n\n",
		verdict, p.sources, p.perSource, n, r.elapsed.Round(time.Second), r.seed)
	b.WriteString(r.text + "\n")
	b.WriteString("| fault | times |\n|---|---|\n")
	var names []string
	for k := range r.faults {
		names = append(names, k)
	}
	slices.Sort(names)
	for _, k := range names {
		fmt.Fprintf(&b, "| %s | %d |\n", k, r.faults[k])
	}
	path := filepath.Join("..", "docs", "RELIABILITY-PG.md")
	if err := os.WriteFile(path, []byte(b.String()), 0o644); err != nil {
		t.Fatalf("write %s: %v", path, err)
	}
	t.Logf("wrote %s", path)
	writeSoakSummary(t)
}
