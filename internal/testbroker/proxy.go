package testbroker

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	toxiproxy "github.com/Shopify/toxiproxy/v2"
	"github.com/prometheus/client_golang/prometheus"
	amqp "github.com/rabbitmq/amqp091-go"
	"github.com/rs/zerolog"
)

// Proxy is an in-process toxiproxy between a client and a broker. Faults are real TCP events:
// closed sockets, resets, bytes that vanish.
type Proxy struct {
	URL  string // the broker URL with host:port replaced by the proxy's
	Addr string // 127.0.0.1:<port> the proxy listens on

	mu sync.Mutex
	p  *toxiproxy.Proxy
	up bool
}

// NewProxy starts a proxy in front of the broker of amqpURL. It is stopped when the test ends.
func NewProxy(t testing.TB, amqpURL string) *Proxy {
	t.Helper()
	u, err := amqp.ParseURI(amqpURL)
	if err != nil {
		t.Fatalf("testbroker: %v", err)
	}
	upstream := fmt.Sprintf("%s:%d", u.Host, u.Port)
	px := NewTCPProxy(t, upstream)
	px.URL = strings.Replace(amqpURL, upstream, px.Addr, 1)
	if px.URL == amqpURL {
		u.Host, u.Port = "127.0.0.1", portOf(px.Addr)
		px.URL = u.String()
	}
	return px
}

// NewTCPProxy starts a proxy in front of any TCP server at upstream (host:port), a PostgreSQL
// server say; its URL is empty: dial Addr. It is stopped when the test ends.
func NewTCPProxy(t testing.TB, upstream string) *Proxy {
	t.Helper()
	srv := toxiproxy.NewServer(toxiproxy.NewMetricsContainer(prometheus.NewRegistry()), zerolog.Nop())
	p := toxiproxy.NewProxy(srv, "proxy", "127.0.0.1:0", upstream)
	if err := p.Start(); err != nil {
		t.Fatalf("testbroker: start proxy: %v", err)
	}
	px := &Proxy{p: p, Addr: p.Listen, up: true}
	t.Cleanup(func() {
		px.mu.Lock()
		defer px.mu.Unlock()
		p.Toxics.ResetToxics(context.Background())
		p.Stop()
	})
	return px
}

// Cut drops every connection through the proxy now; new connections are accepted at once.
func (p *Proxy) Cut(t testing.TB) {
	t.Helper()
	p.mu.Lock()
	defer p.mu.Unlock()
	p.p.Stop()
	if err := p.startLocked(); err != nil {
		t.Fatalf("testbroker: restart proxy: %v", err)
	}
}

// Down drops every connection and refuses new ones until Up.
func (p *Proxy) Down(t testing.TB) {
	t.Helper()
	p.mu.Lock()
	defer p.mu.Unlock()
	p.p.Stop()
	p.up = false
}

// Up accepts connections again after Down.
func (p *Proxy) Up(t testing.TB) {
	t.Helper()
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.up {
		return
	}
	if err := p.startLocked(); err != nil {
		t.Fatalf("testbroker: restart proxy: %v", err)
	}
}

func (p *Proxy) startLocked() error {
	var err error
	// The port was just released; another process may race for it, so retry briefly.
	for i := 0; i < 50; i++ {
		if err = p.p.Start(); err == nil {
			p.up = true
			return nil
		}
		time.Sleep(20 * time.Millisecond)
	}
	return err
}

// Blackhole makes every byte in both directions vanish while sockets stay open, like a dead network
// path: only heartbeats can notice it. Restore ends it.
func (p *Proxy) Blackhole(t testing.TB) {
	t.Helper()
	p.addToxic(t, "blackhole", "timeout", `"timeout":0`)
}

// ResetPeer makes the proxy answer the next bytes in both directions with a TCP reset. Restore ends it.
func (p *Proxy) ResetPeer(t testing.TB) {
	t.Helper()
	p.addToxic(t, "reset", "reset_peer", `"timeout":0`)
}

// LimitData closes each connection after n more bytes in each direction: frames are cut in the
// middle. Restore ends it.
func (p *Proxy) LimitData(t testing.TB, n int) {
	t.Helper()
	p.addToxic(t, "limit", "limit_data", fmt.Sprintf(`"bytes":%d`, n))
}

// Latency delays every byte by d in both directions. Restore ends it.
func (p *Proxy) Latency(t testing.TB, d time.Duration) {
	t.Helper()
	p.addToxic(t, "latency", "latency", fmt.Sprintf(`"latency":%d`, d.Milliseconds()))
}

// Restore removes every toxic.
func (p *Proxy) Restore(t testing.TB) {
	t.Helper()
	p.mu.Lock()
	defer p.mu.Unlock()
	p.p.Toxics.ResetToxics(context.Background())
}

func (p *Proxy) addToxic(t testing.TB, name, typ, attrs string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, stream := range []string{"upstream", "downstream"} {
		js := fmt.Sprintf(`{"name":"%s_%s","type":"%s","stream":"%s","attributes":{%s}}`, name, stream, typ, stream, attrs)
		if _, err := p.p.Toxics.AddToxicJson(strings.NewReader(js)); err != nil {
			t.Fatalf("testbroker: add toxic %s: %v", js, err)
		}
	}
}

func portOf(addr string) int {
	var port int
	if i := strings.LastIndexByte(addr, ':'); i >= 0 {
		_, _ = fmt.Sscanf(addr[i+1:], "%d", &port)
	}
	return port
}
