package integration

import (
	"context"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/rabbitkit/rabbitkit/internal/history"
	"github.com/rabbitkit/rabbitkit/internal/testbroker"
	"github.com/rabbitkit/rabbitkit/protocol"
)

// TestOperatorRedrive walks the operator's path for undeliverable messages with the binaries:
// the publisher sends to an exchange with no queue bound, so every message is returned and parked,
// and the run fails saying so; `rabbitkit journal parked` lists the parked messages with the reason; the operator
// binds the queue (a publisher run that declares it), re-drives, and the consumer applies every
// message exactly once, with its original stamp.
func TestOperatorRedrive(t *testing.T) {
	url := testbroker.SharedURL(t)
	bin := binaries(t)
	dir := t.TempDir()
	exchange, queue := testbroker.Name(t, "op-x"), testbroker.Name(t, "op-q")
	testbroker.DeleteQueues(t, url, queue, queue+".parked")
	testbroker.DeleteExchanges(t, url, exchange)
	journalPath := filepath.Join(dir, "outbox.db")
	run := func(wantOK bool, name string, args ...string) string {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
		defer cancel()
		out, err := exec.CommandContext(ctx, filepath.Join(bin, name), args...).CombinedOutput()
		if (err == nil) != wantOK {
			t.Fatalf("%s %s: %v (want ok=%v)\n%s", name, strings.Join(args, " "), err, wantOK, out)
		}
		return string(out)
	}
	pub := []string{"-url", url, "-source", "op-src", "-journal", journalPath, "-exchange", exchange, "-routing-key", queue}

	// 1. No queue bound: 5 messages returned as unroutable, parked; the run fails and says what to do.
	out := run(false, "publisher", append(pub, "-count", "5")...)
	if !strings.Contains(out, "5 messages parked") || !strings.Contains(out, "rabbitkit journal") {
		t.Fatalf("the failed run does not say what happened and what to do:\n%s", out)
	}
	var accepted []protocol.Stamp
	for _, l := range strings.Split(out, "\n") {
		if s, err := history.ParseAccepted(l); err == nil {
			accepted = append(accepted, s)
		}
	}
	if len(accepted) != 5 {
		t.Fatalf("%d accepted lines, want 5:\n%s", len(accepted), out)
	}

	// 2. rabbitkit journal shows them with the reason.
	out = run(true, "rabbitkit", "journal", "parked", journalPath)
	if strings.Count(out, "NO_ROUTE") != 5 {
		t.Fatalf("rabbitkit journal parked: want 5 unroutable entries:\n%s", out)
	}

	// 3. The cause is fixed (the queue is declared and bound), the messages are re-driven and sent.
	out = run(true, "rabbitkit", "journal", "redrive", journalPath, "all")
	if !strings.Contains(out, "re-driven 5") {
		t.Fatalf("rabbitkit journal redrive: %s", out)
	}
	run(true, "publisher", append(pub, "-queue", queue, "-count", "0")...)
	if out = run(true, "rabbitkit", "journal", "-json", "stats", journalPath); !strings.Contains(out, `"pending":0,`) || !strings.Contains(out, `"parked":0,`) {
		t.Fatalf("journal after the re-drive: %s", out)
	}

	// 4. The consumer applies each exactly once, with the stamp it was accepted with.
	store := filepath.Join(dir, "consumer.db")
	run(true, "consumer", "-url", url, "-queue", queue, "-store", store, "-exit-idle", "2s")
	out = run(true, "consumer", "-dump", "-store", store)
	applied := map[protocol.Stamp]int64{}
	for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
		a, err := history.ParseApplied(l)
		if err != nil {
			t.Fatalf("dump line %q: %v", l, err)
		}
		applied[a.Stamp] = a.Count
	}
	for _, s := range accepted {
		if applied[s] != 1 {
			t.Errorf("%s applied %d times, want 1", s, applied[s])
		}
	}
	if len(applied) != len(accepted) {
		t.Errorf("%d applied, want %d:\n%s", len(applied), len(accepted), out)
	}
}
