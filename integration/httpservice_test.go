package integration

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	neturl "net/url"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/rabbitkit/rabbitkit/internal/history"
	"github.com/rabbitkit/rabbitkit/internal/pgtest"
	"github.com/rabbitkit/rabbitkit/internal/testbroker"
	"github.com/rabbitkit/rabbitkit/protocol"
)

// TestHTTPServiceWhileBrokerDown: the HTTP service answers 202 while the broker is unreachable,
// and once it is back every accepted request reaches the consumer exactly once — also across a
// SIGKILL of the service during the outage (restarted on the same journal).
func TestHTTPServiceWhileBrokerDown(t *testing.T) {
	proxy, c := httpServiceCluster(t, "http")
	journalPath := filepath.Join(c.dir, "http.journal")

	start := func(n int) (*proc, string) {
		return startHTTPService(t, c, n, "-url", proxy.URL, "-source", "http", "-journal", journalPath,
			"-exchange", c.exchange, "-queue", c.queue)
	}

	proxy.Down(t) // the broker is unreachable from the start
	svc, base := start(1)
	var accepted []protocol.Stamp
	post := func(i int) {
		t.Helper()
		v := postMessage(t, base, fmt.Sprintf("request %d", i), http.StatusAccepted)
		accepted = append(accepted, v.stamp())
	}
	for i := range 100 {
		post(i)
	}
	svc.kill() // crash during the outage: the journal keeps the 100
	svc, base = start(2)
	for i := 100; i < 200; i++ {
		post(i)
	}
	if h := getHealth(t, base); h["pending"] != float64(200) {
		t.Fatalf("healthz during the outage: %v, want 200 pending", h)
	}

	proxy.Up(t)
	drainAndCheck(t, c, svc, base, "http", accepted)
}

// httpServiceCluster is the broker proxy and the harness (for its consumer) of an httpservice
// test; name prefixes the exchange and the queue.
func httpServiceCluster(t *testing.T, name string) (*testbroker.Proxy, *cluster) {
	t.Helper()
	url := testbroker.SharedURL(t)
	proxy := testbroker.NewProxy(t, url)
	c := newCluster(t, proxy.URL, "classic", 1, 0)
	c.exchange = testbroker.Name(t, name+"-x")
	c.queue = testbroker.Name(t, name+"-q")
	testbroker.DeleteQueues(t, url, c.queue, c.queue+".parked")
	testbroker.DeleteExchanges(t, url, c.exchange)
	return proxy, c
}

// drainAndCheck waits until the service at base reports nothing pending (the broker is back),
// stops it, drains the queue with a consumer and checks that accepted, the 202 answers of source,
// were applied exactly once and nothing else was.
func drainAndCheck(t *testing.T, c *cluster, svc *proc, base, source string, accepted []protocol.Stamp) {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for getHealth(t, base)["pending"] != float64(0) {
		if time.Now().After(deadline) {
			t.Fatalf("not drained a minute after the broker came back: %v", getHealth(t, base))
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err := svc.term(20 * time.Second); err != nil {
		t.Fatalf("httpservice SIGTERM: %v\n%s", err, svc.describe())
	}
	c.startConsumer(2 * time.Second)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := c.cons[0].wait(ctx); err != nil {
		t.Fatalf("consumer: %v\n%s", err, c.cons[0].describe())
	}
	c.dump()
	h := c.history() // the consumer's ledger, gaps and conflicts; the service ran outside the cluster
	h.Runs = []history.Run{{Source: source, Accepted: accepted}}
	res := history.Check(h)
	if !res.OK() || res.ExactlyOnce != len(accepted) || res.Applied != len(accepted) {
		t.Fatalf("want the %d accepted requests applied exactly once and nothing else:\n%s\n%v", len(accepted), res.Table(), res.Samples)
	}
}

// startHTTPService starts examples/httpservice on a free port and returns it and its base URL.
func startHTTPService(t *testing.T, c *cluster, n int, args ...string) (*proc, string) {
	t.Helper()
	addrc := make(chan string, 1)
	p := startProc(t, c.dir, procSpec{
		name: fmt.Sprintf("httpservice#%d", n), bin: filepath.Join(c.bin, "httpservice"),
		args: append([]string{"-listen", "127.0.0.1:0"}, args...),
		onStderr: func(line string) {
			if _, rest, ok := strings.Cut(line, "msg=listening addr="); ok {
				addrc <- strings.Fields(rest)[0]
			}
		},
	})
	select {
	case addr := <-addrc:
		return p, "http://" + addr
	case <-time.After(30 * time.Second):
		t.Fatalf("httpservice did not listen: %s", p.describe())
		return nil, ""
	}
}

// postAnswer is POST /messages's 202 body.
type postAnswer struct {
	Source  string `json:"source"`
	Epoch   int64  `json:"epoch"`
	Stream  string `json:"stream"`
	Seq     int64  `json:"seq"`
	Stamp   string `json:"stamp"`
	OrderID int64  `json:"order_id"`
}

func (a postAnswer) stamp() protocol.Stamp {
	return protocol.Stamp{Source: a.Source, Epoch: a.Epoch, Stream: a.Stream, Seq: a.Seq}
}

// postMessage POSTs body to /messages and fails the test unless the answer has status want.
func postMessage(t *testing.T, base, body string, want int) postAnswer {
	t.Helper()
	resp, err := http.Post(base+"/messages", "text/plain", strings.NewReader(body))
	if err != nil {
		t.Fatalf("POST: %v", err)
	}
	defer resp.Body.Close()
	var v postAnswer
	if resp.StatusCode != want {
		msg, _ := io.ReadAll(resp.Body)
		t.Fatalf("POST answered %s (%s), want %d", resp.Status, strings.TrimSpace(string(msg)), want)
	}
	if want == http.StatusAccepted {
		if err := json.NewDecoder(resp.Body).Decode(&v); err != nil {
			t.Fatalf("decode: %v", err)
		}
	}
	return v
}

// getHealth returns GET /healthz's body.
func getHealth(t *testing.T, base string) map[string]any {
	t.Helper()
	resp, err := http.Get(base + "/healthz")
	if err != nil {
		t.Fatalf("GET /healthz: %v", err)
	}
	defer resp.Body.Close()
	var v map[string]any
	if err := json.NewDecoder(resp.Body).Decode(&v); err != nil {
		t.Fatalf("decode: %v", err)
	}
	return v
}

// TestHTTPServicePGWhileBrokerDown: the HTTP service in -pg mode commits each request's order row
// and its message in one transaction and answers 202 while the broker is unreachable. With the
// database unreachable it answers 503 and writes nothing. A SIGKILL during the outage loses
// nothing (another process takes the relay lease over). Once the broker is back every accepted
// order's message reaches the consumer exactly once, and every order row carries the stamp of a
// message that was applied.
func TestHTTPServicePGWhileBrokerDown(t *testing.T) {
	proxy, c := httpServiceCluster(t, "httppg")
	dsn := pgtest.DSN(t)
	u, err := neturl.Parse(dsn)
	if err != nil {
		t.Fatal(err)
	}
	pgPx := testbroker.NewTCPProxy(t, u.Host)
	u.Host = pgPx.Addr
	start := func(n int) (*proc, string) {
		return startHTTPService(t, c, n, "-url", proxy.URL, "-source", "httppg", "-pg", u.String(), "-lease-ttl", "2s",
			"-exchange", c.exchange, "-queue", c.queue)
	}
	pool := pgtest.PoolOn(t, dsn, 2)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	count := func(q string) int {
		t.Helper()
		var n int
		if err := pool.QueryRow(ctx, q).Scan(&n); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
		return n
	}

	proxy.Down(t) // the broker is unreachable from the start
	svc, base := start(1)
	var accepted []protocol.Stamp
	orders := map[string]int64{}
	post := func(i int) {
		t.Helper()
		v := postMessage(t, base, fmt.Sprintf("order %d", i), http.StatusAccepted)
		if v.OrderID == 0 || v.Stamp == "" {
			t.Fatalf("202 without an order id or stamp: %+v", v)
		}
		accepted = append(accepted, v.stamp())
		orders[v.Stamp] = v.OrderID
	}
	for i := range 100 {
		post(i)
	}
	// The database unreachable: 503, and nothing written.
	pgPx.Down(t)
	postMessage(t, base, "order while the database is away", http.StatusServiceUnavailable)
	pgPx.Up(t)
	if n := count(`SELECT count(*) FROM httpservice_orders`); n != 100 {
		t.Fatalf("%d order rows after 100 accepted requests and one refused, want 100", n)
	}
	svc.kill() // crash during the outage: the outbox keeps the 100
	svc, base = start(2)
	for i := 100; i < 200; i++ {
		post(i)
	}
	if h := getHealth(t, base); h["pending"] != float64(200) {
		t.Fatalf("healthz during the outage: %v, want 200 pending", h)
	}

	proxy.Up(t)
	drainAndCheck(t, c, svc, base, "httppg", accepted)
	// Every order row carries the stamp the service answered with: the row and its message
	// committed together, and nothing else was committed.
	rows, err := pool.Query(ctx, `SELECT id, stamp FROM httpservice_orders`)
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for rows.Next() {
		var id int64
		var st string
		if err := rows.Scan(&id, &st); err != nil {
			t.Fatal(err)
		}
		if orders[st] != id {
			t.Errorf("order row %d has stamp %q, which no 202 answered with that order id", id, st)
		}
		n++
	}
	rows.Close()
	if n != len(orders) {
		t.Errorf("%d order rows, %d accepted orders", n, len(orders))
	}
	if left := count(`SELECT count(*) FROM rabbitkit_outbox`); left != 0 {
		t.Errorf("%d rows left in the outbox", left)
	}
}
