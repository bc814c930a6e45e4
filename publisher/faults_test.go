package publisher

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/rabbitkit/rabbitkit/internal/testbroker"
	"github.com/rabbitkit/rabbitkit/internal/testutil"
	"github.com/rabbitkit/rabbitkit/metrics"
)

// publisherRun publishes n messages in the background (paced) while the test injects a fault.
type publisherRun struct {
	l    *ledger
	done chan struct{}
	mu   sync.Mutex
	errs []error
}

func startPublishing(p *Publisher, s setup, n int, pace time.Duration) *publisherRun {
	pr := &publisherRun{l: newLedger(), done: make(chan struct{})}
	go func() { // joined by pr.wait on the test goroutine
		defer close(pr.done)
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		for i := range n {
			stream := fmt.Sprintf("s%d", i%3)
			r, err := p.Publish(ctx, Message{Exchange: s.exchange, RoutingKey: s.key, Stream: stream, Body: fmt.Appendf(nil, "m%d", i)})
			if err != nil {
				pr.mu.Lock()
				pr.errs = append(pr.errs, err)
				pr.mu.Unlock()
				return
			}
			pr.l.add(r.Stamp())
			time.Sleep(pace)
		}
	}()
	return pr
}

func (pr *publisherRun) wait(t *testing.T) {
	t.Helper()
	<-pr.done
	pr.mu.Lock()
	defer pr.mu.Unlock()
	if len(pr.errs) > 0 {
		t.Fatalf("Publish failed during the fault (it must keep accepting): %v", pr.errs)
	}
}

// waitAccepted waits until at least n messages were accepted.
func (pr *publisherRun) waitAccepted(t *testing.T, n int) {
	t.Helper()
	testutil.Eventually(t, 30*time.Second, fmt.Sprintf("%d accepted", n), func() bool { return pr.l.count() >= n })
}

// TestProxyFaults drives each connection fault through an in-process toxiproxy in front of the
// shared broker while publishing, then checks every accepted message arrived, in order.
func TestProxyFaults(t *testing.T) {
	url := testbroker.SharedURL(t)
	tests := []struct {
		name       string
		fault      func(t *testing.T, px *testbroker.Proxy, pr *publisherRun)
		reconnects bool // the fault must have forced a new connection
	}{
		{"reset-mid-stream", func(t *testing.T, px *testbroker.Proxy, pr *publisherRun) {
			for k := range 2 {
				pr.waitAccepted(t, 300*(k+1))
				px.ResetPeer(t)
				time.Sleep(300 * time.Millisecond)
				px.Restore(t)
			}
		}, true},
		{"cut-mid-frame", func(t *testing.T, px *testbroker.Proxy, pr *publisherRun) {
			pr.waitAccepted(t, 300)
			px.LimitData(t, 3000) // the next connection too is cut after 3000 bytes
			time.Sleep(time.Second)
			px.Restore(t)
		}, true},
		{"black-hole", func(t *testing.T, px *testbroker.Proxy, pr *publisherRun) {
			pr.waitAccepted(t, 300)
			px.Blackhole(t)
			time.Sleep(4500 * time.Millisecond) // heartbeat 1s: noticed after ~3s
			px.Restore(t)
		}, true},
		{"flapping", func(t *testing.T, px *testbroker.Proxy, pr *publisherRun) {
			pr.waitAccepted(t, 100)
			for range 5 {
				time.Sleep(time.Second)
				px.Cut(t)
			}
		}, true},
		{"unreachable", func(t *testing.T, px *testbroker.Proxy, pr *publisherRun) {
			pr.waitAccepted(t, 300)
			px.Down(t)
			n := pr.l.count()
			time.Sleep(3 * time.Second)
			if pr.l.count() <= n {
				t.Errorf("Publish did not keep accepting while the broker was unreachable")
			}
			px.Up(t)
		}, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			px := testbroker.NewProxy(t, url)
			s := newSetup(t, url, "classic", nil)
			m := &metrics.Memory{}
			cfg := s.config(t, px.URL, t.TempDir())
			cfg.Metrics = m
			p := mustNew(t, cfg)
			pr := startPublishing(p, s, 1500, 2*time.Millisecond)
			tc.fault(t, px, pr)
			pr.wait(t)
			flush(t, p, 60*time.Second)
			check(t, url, s.queue, pr.l, checkOpts{})
			if tc.reconnects && m.Get(MetricReconnects) < 1 {
				t.Errorf("no reconnect recorded (metrics %v)", m.Snapshot())
			}
			t.Logf("metrics: reconnects %v, resent %v, unknown %v", m.Get(MetricReconnects), m.Get(MetricResent), m.Get(MetricUnknown))
		})
	}
}
