package integration

import (
	"math/rand/v2"
	"net/url"
	"testing"
	"time"

	"github.com/rabbitkit/rabbitkit/examples/history"
	"github.com/rabbitkit/rabbitkit/internal/pgtest"
	"github.com/rabbitkit/rabbitkit/internal/testbroker"
)

// TestPGCompetingConsumers: three consumer processes (examples/consumer -pg) on one queue share
// one PostgreSQL inbox, and their handler inserts one ledger row per message with no unique
// constraint. They are SIGKILLed and restarted at random, and the connections to the broker and
// to PostgreSQL are cut and reset (toxiproxy), some of them while COMMIT is in flight. Every
// message a publisher accepted must have exactly one ledger row, and nothing may be reported
// missing: a seq handled by another replica is not a gap.
func TestPGCompetingConsumers(t *testing.T) {
	url0 := testbroker.SharedURL(t)
	dsn := pgtest.DSN(t)
	u, err := url.Parse(dsn)
	if err != nil {
		t.Fatal(err)
	}
	pgProxy := testbroker.NewTCPProxy(t, u.Host)
	proxied := *u
	proxied.Host = pgProxy.Addr
	broker := testbroker.NewProxy(t, url0)

	c := newCluster(t, broker.URL, "classic", 2, 2500)
	c.exchange = testbroker.Name(t, "pg-x")
	c.queue = testbroker.Name(t, "pg-q")
	c.rate = 150
	c.streams = 4
	c.consumers = 3
	c.pg, c.pgDirect = proxied.String(), dsn
	testbroker.DeleteQueues(t, url0, c.queue, c.queue+".parked")
	testbroker.DeleteExchanges(t, url0, c.exchange)

	c.startConsumers()
	for _, s := range c.sources {
		c.startPublisher(s)
	}
	seed := rand.Uint64()
	t.Logf("fault seed %d", seed)
	rng := rand.New(rand.NewPCG(seed, 1))
	faults := []struct {
		name string
		do   func()
	}{
		{"consumer SIGKILL + restart", func() { c.killConsumerAt(rng.IntN(c.consumers)) }},
		{"another consumer SIGKILL + restart", func() { c.killConsumerAt(rng.IntN(c.consumers)) }},
		{"PostgreSQL connections cut", func() { pgProxy.Cut(t) }},
		{"PostgreSQL connections reset (RST)", func() { pgProxy.ResetPeer(t); c.sleep(500 * time.Millisecond); pgProxy.Restore(t) }},
		{"PostgreSQL unreachable (3 s)", func() { pgProxy.Down(t); c.sleep(3 * time.Second); pgProxy.Up(t) }},
		{"broker connections cut", func() { broker.Cut(t) }},
	}
	counts := map[string]int{}
	for end := time.Now().Add(25 * time.Second); time.Now().Before(end); {
		f := faults[rng.IntN(len(faults))]
		f.do()
		counts[f.name]++
		c.sleep(time.Duration(700+rng.IntN(1300)) * time.Millisecond)
	}
	t.Logf("faults: %v", counts)
	c.finish(3 * time.Minute)

	res := history.Check(c.history())
	t.Log("\n" + res.Table().String())
	t.Log("\n" + c.processTable().String())
	want := 0
	for _, s := range c.sources {
		want += s.target
	}
	if !res.OK() || res.Accepted != want || res.ExactlyOnce != want {
		t.Fatalf("want all %d accepted messages applied exactly once (one ledger row each): %+v", want, res)
	}
	for _, f := range c.failures {
		t.Errorf("a process failed: %s", f)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	busy := 0
	for _, st := range c.consStats {
		if st["handled"] > 0 {
			busy++
		}
	}
	if busy < 3 {
		t.Fatalf("only %d consumer runs handled anything: the replicas did not compete", busy)
	}
}
