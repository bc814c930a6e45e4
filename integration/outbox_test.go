package integration

import (
	"context"
	neturl "net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/rabbitkit/rabbitkit/internal/history"
	"github.com/rabbitkit/rabbitkit/internal/pgtest"
	"github.com/rabbitkit/rabbitkit/internal/testbroker"
)

// TestOutboxReplicas: two examples/publisher -pg replicas of one service (the same -source and
// database) publish 1,000 messages each to one queue through the PostgreSQL outbox; the replica
// holding the relay lease is SIGKILLed mid-run and restarted (the other takes the relay over when
// the lease expires). examples/consumer drains the queue. Every accepted line is applied exactly
// once; every order row committed (its message in the same transaction) is applied, so that
// nothing committed is lost and nothing rolled back is sent; each replica exits 0 with
// "confirmed <n>" only when the outbox holds none of its rows; the outbox is empty at the end.
func TestOutboxReplicas(t *testing.T) { runOutboxReplicas(t, 0) }

// TestOutboxReplicasPGCuts is TestOutboxReplicas with the replicas' PostgreSQL connections
// (writers, relays, leases, Settle) going through a TCP proxy that cuts them all every 700 ms:
// transactions fail before COMMIT (retried), and a COMMIT cut in flight is settled with
// pg_xact_status (accepted if it committed, another message published if not).
func TestOutboxReplicasPGCuts(t *testing.T) { runOutboxReplicas(t, 8) }

func runOutboxReplicas(t *testing.T, cuts int) {
	url := testbroker.SharedURL(t)
	dsn := pgtest.DSN(t)
	c := newCluster(t, url, "classic", 2, 1000)
	c.exchange = testbroker.Name(t, "outbox-x")
	c.queue = testbroker.Name(t, "outbox-q")
	c.rate = 250
	pubDSN := dsn
	var pgProxy *testbroker.Proxy
	if cuts > 0 {
		u, err := neturl.Parse(dsn)
		if err != nil {
			t.Fatal(err)
		}
		pgProxy = testbroker.NewTCPProxy(t, u.Host)
		u.Host = pgProxy.Addr
		pubDSN = u.String()
		c.rate = 150
	}
	c.pgPub = []string{"-pg", pubDSN, "-lease-ttl", "2s"}
	testbroker.DeleteQueues(t, url, c.queue, c.queue+".parked")
	testbroker.DeleteExchanges(t, url, c.exchange)
	for i, s := range c.sources {
		s.name = "rk-outbox-svc"
		s.replica = "-r" + strconv.Itoa(i)
	}
	pool := pgtest.PoolOn(t, dsn, 2)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()

	c.startConsumer(0)
	for _, s := range c.sources {
		c.startPublisher(s)
	}
	c.sleep(2 * time.Second)

	// Kill the replica whose relay holds the lease (its owner names the pid), mid-run.
	var owner string
	if err := pool.QueryRow(ctx, `SELECT owner FROM rabbitkit_outbox_leases WHERE name = 'relay'`).Scan(&owner); err != nil {
		t.Fatalf("read the relay lease: %v", err)
	}
	victim := c.sources[0]
	for _, s := range c.sources {
		if strings.Contains(owner, "-"+strconv.Itoa(s.cur.proc.cmd.Process.Pid)+"-") {
			victim = s
		}
	}
	before := c.accepted(victim)
	if before == 0 || before >= victim.target {
		t.Fatalf("the victim accepted %d of %d before the kill: too early or too late to test anything", before, victim.target)
	}
	t.Logf("lease owner %q; SIGKILL %s after %d accepted lines", owner, victim.cur.proc.name, before)
	c.killPublisher(victim)
	for range cuts {
		c.sleep(700 * time.Millisecond)
		pgProxy.Cut(t)
	}
	c.finish(3 * time.Minute)
	if cuts > 0 {
		t.Logf("%d PostgreSQL cuts; COMMITs settled with pg_xact_status: %d committed, %d not", cuts,
			countInLogs(t, c.dir, "outcome settled", "committed=true"), countInLogs(t, c.dir, "outcome settled", "committed=false"))
	}

	for _, r := range c.runs {
		if !r.proc.wasKilled() && r.confirmed != int64(len(r.accepted)) {
			t.Errorf("%s: confirmed %d, accepted %d", r.proc.name, r.confirmed, len(r.accepted))
		}
	}
	if len(c.failures) > 0 {
		t.Errorf("processes failed on their own:\n%s", strings.Join(c.failures, "\n"))
	}
	if len(c.junk) > 0 {
		t.Errorf("%d unparsable stdout lines, first: %q", len(c.junk), c.junk[0])
	}
	var left, orders int
	if err := pool.QueryRow(ctx, `SELECT count(*) FROM rabbitkit_outbox`).Scan(&left); err != nil {
		t.Fatal(err)
	}
	if err := pool.QueryRow(ctx, `SELECT count(*) FROM rabbitkit_example_orders`).Scan(&orders); err != nil {
		t.Fatal(err)
	}
	if left != 0 {
		t.Errorf("%d rows left in the outbox after every replica exited", left)
	}

	res := history.Check(c.history())
	t.Logf("accepted %d, applied %d, exactly once %d, unprinted %d, phantom %d; order rows %d",
		res.Accepted, res.Applied, res.ExactlyOnce, res.Unprinted, res.Phantom, orders)
	// A replica's run prints each line right after its COMMIT, before the next transaction: a
	// SIGKILL can leave at most one committed message unprinted, which the checker may count as
	// Phantom, since replicas' runs interleave on one source and its windows do not apply.
	kills := victim.kills
	if res.Lost != 0 || res.AppliedTwice != 0 || res.AcceptedTwice != 0 || res.FalseGaps != 0 || res.Conflicts != 0 ||
		res.Phantom > kills {
		t.Errorf("guarantee broken: %+v", res)
	}
	if res.Accepted < 2000 {
		t.Errorf("%d messages accepted, want 2000", res.Accepted)
	}
	if res.Applied != orders {
		t.Errorf("%d messages applied but %d order rows committed: the business write and its message did not commit together", res.Applied, orders)
	}
	if unprinted := orders - res.Accepted; unprinted < 0 || unprinted > kills {
		t.Errorf("%d order rows, %d accepted lines: at most %d committed without a printed line", orders, res.Accepted, kills)
	}
}

// countInLogs counts the lines of the publisher logs in dir that contain every one of subs.
func countInLogs(t *testing.T, dir string, subs ...string) int {
	files, err := filepath.Glob(filepath.Join(dir, "publisher-*.log"))
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
	line:
		for _, l := range strings.Split(string(b), "\n") {
			for _, s := range subs {
				if !strings.Contains(l, s) {
					continue line
				}
			}
			n++
		}
	}
	return n
}
