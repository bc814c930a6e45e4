package integration

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/rabbitkit/rabbitkit/internal/history"
	"github.com/rabbitkit/rabbitkit/internal/testbroker"
	"github.com/rabbitkit/rabbitkit/protocol"
)

// TestHTTPServiceWhileBrokerDown: the HTTP service answers 202 while the broker is unreachable,
// and once it is back every accepted request reaches the consumer exactly once — also across a
// SIGKILL of the service during the outage (restarted on the same journal).
func TestHTTPServiceWhileBrokerDown(t *testing.T) {
	url := testbroker.SharedURL(t)
	proxy := testbroker.NewProxy(t, url)
	c := newCluster(t, proxy.URL, "classic", 1, 0)
	c.exchange = testbroker.Name(t, "http-x")
	c.queue = testbroker.Name(t, "http-q")
	testbroker.DeleteQueues(t, url, c.queue, c.queue+".parked")
	testbroker.DeleteExchanges(t, url, c.exchange)
	journalPath := filepath.Join(c.dir, "http.journal")

	start := func(n int) (*proc, string) {
		addrc := make(chan string, 1)
		p := startProc(t, c.dir, procSpec{
			name: fmt.Sprintf("httpservice#%d", n), bin: filepath.Join(c.bin, "httpservice"),
			args: []string{"-listen", "127.0.0.1:0", "-url", proxy.URL, "-source", "http", "-journal", journalPath,
				"-exchange", c.exchange, "-queue", c.queue},
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

	proxy.Down(t) // the broker is unreachable from the start
	svc, base := start(1)
	var accepted []protocol.Stamp
	post := func(i int) {
		t.Helper()
		resp, err := http.Post(base+"/messages", "text/plain", strings.NewReader(fmt.Sprintf("request %d", i)))
		if err != nil {
			t.Fatalf("POST: %v", err)
		}
		defer resp.Body.Close()
		var v struct {
			Source string `json:"source"`
			Epoch  int64  `json:"epoch"`
			Stream string `json:"stream"`
			Seq    int64  `json:"seq"`
		}
		if resp.StatusCode != http.StatusAccepted {
			t.Fatalf("POST answered %s, want 202 Accepted", resp.Status)
		}
		if err := json.NewDecoder(resp.Body).Decode(&v); err != nil {
			t.Fatalf("decode: %v", err)
		}
		accepted = append(accepted, protocol.Stamp{Source: v.Source, Epoch: v.Epoch, Stream: v.Stream, Seq: v.Seq})
	}
	for i := range 100 {
		post(i)
	}
	svc.kill() // crash during the outage: the journal keeps the 100
	svc, base = start(2)
	for i := 100; i < 200; i++ {
		post(i)
	}
	health := func() map[string]any {
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
	if h := health(); h["pending"] != float64(200) {
		t.Fatalf("healthz during the outage: %v, want 200 pending", h)
	}

	proxy.Up(t)
	deadline := time.Now().Add(time.Minute)
	for health()["pending"] != float64(0) {
		if time.Now().After(deadline) {
			t.Fatalf("journal not drained a minute after the broker came back: %v", health())
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
	h.Runs = []history.Run{{Source: "http", Accepted: accepted}}
	res := history.Check(h)
	if !res.OK() || res.ExactlyOnce != 200 || res.Applied != 200 {
		t.Fatalf("want the 200 accepted requests applied exactly once and nothing else:\n%s\n%v", res.Table(), res.Samples)
	}
}
