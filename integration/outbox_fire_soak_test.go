//go:build soak

package integration

import (
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"
)

// TestSoakOutboxFire is the outbox relay's long run of `make soak`: TestOutboxRelayUnderFire's
// three replicas and faults, drawn at random for RABBITKIT_SOAK_OUTBOX_MINUTES (default 10) while
// the replicas write RABBITKIT_SOAK_OUTBOX_MESSAGES (default 100,000) in all. It writes
// docs/RELIABILITY-OUTBOX.md.
func TestSoakOutboxFire(t *testing.T) {
	total := envInt(t, "RABBITKIT_SOAK_OUTBOX_MESSAGES", 100_000)
	minutes := envInt(t, "RABBITKIT_SOAK_OUTBOX_MINUTES", 10)
	faultsFor := time.Duration(minutes) * time.Minute
	per := total / 3
	p := outboxFireParams{perReplica: per, rate: float64(per) / (faultsFor.Seconds() + 20), faultsFor: faultsFor}
	r := runOutboxFire(t, p)
	t.Log("\n" + r.text)

	var b strings.Builder
	cmd := "make soak"
	scaled := total != 100_000 || minutes != 10
	if scaled {
		cmd = fmt.Sprintf("RABBITKIT_SOAK_OUTBOX_MESSAGES=%d RABBITKIT_SOAK_OUTBOX_MINUTES=%d go test -race=false -count=1 -timeout 2h -tags soak -run TestSoakOutboxFire -v ./integration/", total, minutes)
	}
	b.WriteString("# Reliability: the PostgreSQL outbox's relay under fire\n\n")
	b.WriteString("This file is written by `TestSoakOutboxFire` (integration/outbox_fire_soak_test.go). Do not edit it\n")
	fmt.Fprintf(&b, "by hand: run the command below and commit what it writes.\n\n```sh\n%s\n```\n\n", cmd)
	if scaled {
		fmt.Fprintf(&b, "**This is a scaled-down run** (%d messages, %d minutes of faults), not the default soak.\n\n", total, minutes)
	}
	b.WriteString("What it does: three `examples/publisher -pg` processes are replicas of one service (one source,\n")
	b.WriteString("one outbox table in a private PostgreSQL server, initdb in a temp dir, own port); each message is\n")
	b.WriteString("committed with a row of a business table. Every replica writes; the one holding the relay lease\n")
	fmt.Fprintf(&b, "(TTL %v) relays. Each replica reaches PostgreSQL and the broker through toxiproxies of its own.\n", fireTTL)
	b.WriteString("Faults, one at a time in a random order: the leaseholder's process SIGKILLed (and restarted), its\n")
	b.WriteString("PostgreSQL link black-holed until another replica took the lease, its broker link black-holed\n")
	b.WriteString("for 4 s, its PostgreSQL or broker connections cut, the PostgreSQL server crashed (immediate stop)\n")
	b.WriteString("or shut down (fast) and restarted. One `examples/consumer -pg` process (PostgreSQL inbox on the shared server) applies\n")
	b.WriteString("the messages into a ledger table with no unique constraint; its broker and PostgreSQL links go\n")
	b.WriteString("through proxies too, and take faults of their own: connections cut, the inbox link black-holed for 3 s.\n")
	b.WriteString("At the end: the publishers' `accepted`\n")
	b.WriteString("lines against the ledger (internal/history.Check), the order rows against the applied messages,\n")
	b.WriteString("and per stream the ledger's rows in insertion order (first arrivals must come in seq order).\n")
	b.WriteString("\"Lease held again after\" is measured from the fault to the first lease row of another owner (after\n")
	b.WriteString("a restart: of a renewal), read directly on the server every 20 ms.\n\n")
	fmt.Fprintf(&b, "Measured %s with binaries built at commit %s, on %s, %d CPUs (shared with other work), %s.\n\n",
		time.Now().UTC().Format("2006-01-02 15:04 MST"), buildCommit, hostDesc(), runtime.NumCPU(), runtime.Version())
	verdict := "PASS"
	if t.Failed() {
		verdict = "FAIL"
	}
	n := 0
	for _, c := range r.faults {
		n += c
	}
	fmt.Fprintf(&b, "%s: %d faults, %v, fault seed %d.\n\n", verdict, n, r.elapsed.Round(time.Second), r.seed)
	b.WriteString(r.text)
	if r.result.Phantom > 0 && !t.Failed() {
		fmt.Fprintf(&b, "\n\"Applied, never journaled\" (%d) is within what this run allows: the checker marks it FAIL because\n", r.result.Phantom)
		b.WriteString("it has no journal to look in, but a replica SIGKILLed between its COMMIT and its `accepted` line\n")
		b.WriteString("leaves a committed message unprinted (at most one per kill, and the order rows count it: every\n")
		b.WriteString("order row's message was applied once).\n")
	}
	if len(r.result.Samples) > 0 {
		b.WriteString("\nFailure samples:\n\n")
		for _, x := range r.result.Samples {
			fmt.Fprintf(&b, "- `%s`\n", x)
		}
	}
	path := filepath.Join("..", "docs", "RELIABILITY-OUTBOX.md")
	if err := os.WriteFile(path, []byte(b.String()), 0o644); err != nil {
		t.Fatalf("write %s: %v", path, err)
	}
	t.Logf("wrote %s", path)
	writeSoakSummary(t)
}
