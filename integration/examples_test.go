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
)

// TestHelp: every binary documents its flags with -h and exits 0.
func TestHelp(t *testing.T) {
	bin := binaries(t)
	for _, name := range []string{"publisher", "consumer", "demo"} {
		t.Run(name, func(t *testing.T) {
			out, err := exec.Command(filepath.Join(bin, name), "-h").CombinedOutput()
			if err != nil {
				t.Fatalf("%s -h: %v\n%s", name, err, out)
			}
			if !strings.Contains(string(out), "Usage:") || !strings.Contains(string(out), "-url") {
				t.Fatalf("%s -h does not document its flags:\n%s", name, out)
			}
		})
	}
}

// TestGracefulStopAndRestart: SIGTERM stops a publisher and a consumer gracefully in the middle of
// their work; restarted on the same journal and store they finish it. With no process killed,
// the checker allows nothing but exactly-once: every accepted line applied once, nothing extra.
func TestGracefulStopAndRestart(t *testing.T) {
	url := testbroker.SharedURL(t)
	c := newCluster(t, url, "classic", 1, 3000)
	c.exchange = testbroker.Name(t, "graceful-x")
	c.queue = testbroker.Name(t, "graceful-q")
	c.rate = 1500
	testbroker.DeleteQueues(t, url, c.queue, c.queue+".parked")
	testbroker.DeleteExchanges(t, url, c.exchange)
	src := c.sources[0]

	c.startConsumer(0)
	c.startPublisher(src)
	c.sleep(time.Second)
	if err := src.cur.proc.term(20 * time.Second); err != nil {
		t.Fatalf("publisher after SIGTERM: %v\n%s", err, src.cur.proc.describe())
	}
	src.cur.handled = true
	first := c.accepted(src)
	if first == 0 || first >= src.target {
		t.Fatalf("the first run accepted %d of %d: SIGTERM came too late to test anything", first, src.target)
	}
	if err := c.cons[0].term(20 * time.Second); err != nil {
		t.Fatalf("consumer after SIGTERM: %v\n%s", err, c.cons[0].describe())
	}
	c.startConsumer(0)
	c.startPublisher(src) // publishes the rest, after what the journal holds
	c.finish(2 * time.Minute)

	res := history.Check(c.history())
	t.Log("\n" + res.Table().String())
	if !res.OK() || res.Unprinted != 0 || res.Accepted != src.target || res.ExactlyOnce != src.target {
		t.Fatalf("want all %d accepted messages applied exactly once and nothing else: %+v", src.target, res)
	}
	for _, f := range c.failures {
		t.Errorf("a process failed: %s", f)
	}
}

// TestDemo runs the demo binary (what `make demo` runs) briefly against the shared broker: it must
// pass its own verdict and exit 0.
func TestDemo(t *testing.T) {
	url := testbroker.SharedURL(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, filepath.Join(binaries(t), "demo"), "-url", url, "-duration", "12s", "-fault-every", "2s")
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "PASS: all") {
		t.Fatalf("demo: %v\n%s", err, out)
	}
	t.Log("\n" + string(out))
}
