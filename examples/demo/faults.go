package main

import (
	"context"
	"fmt"
	"math/rand/v2"
	"strings"
	"sync"
	"time"

	toxiproxy "github.com/Shopify/toxiproxy/v2"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"
)

// faultProxy is an in-process toxiproxy between the demo's publisher and consumer and the broker.
// Its faults are real TCP events: closed sockets, resets, bytes that silently vanish.
type faultProxy struct {
	mu sync.Mutex
	p  *toxiproxy.Proxy

	now    string         // the fault in progress, for the progress line
	counts map[string]int // faults injected, by kind
}

// newFaultProxy listens on a free local port and forwards to upstream (host:port).
func newFaultProxy(upstream string) (*faultProxy, error) {
	srv := toxiproxy.NewServer(toxiproxy.NewMetricsContainer(prometheus.NewRegistry()), zerolog.Nop())
	p := toxiproxy.NewProxy(srv, "rabbitmq", "127.0.0.1:0", upstream)
	if err := p.Start(); err != nil {
		return nil, fmt.Errorf("start proxy: %w", err)
	}
	return &faultProxy{p: p, counts: map[string]int{}}, nil
}

// Addr is where clients connect instead of the broker.
func (f *faultProxy) Addr() string { return f.p.Listen }

// Fault kinds, in the order the verdict lists them.
const (
	faultCut       = "connection cut"
	faultReset     = "connection reset (TCP RST)"
	faultBlackhole = "black hole (found by heartbeat)"
	faultDown      = "broker unreachable"
)

var faultKinds = []string{faultCut, faultReset, faultBlackhole, faultDown}

// inject runs one fault of the given kind, holding it as long as that kind needs, and heals it.
// It returns early (healed) when ctx ends.
func (f *faultProxy) inject(ctx context.Context, kind string) error {
	f.mu.Lock()
	f.now = kind
	f.counts[kind]++
	f.mu.Unlock()
	defer func() {
		f.mu.Lock()
		f.now = ""
		f.mu.Unlock()
	}()
	switch kind {
	case faultCut: // every socket closed at once; reconnects are accepted right away
		f.p.Stop()
		return f.start()
	case faultReset: // TCP RST on the next bytes, for a second
		if err := f.toxic("reset", "reset_peer", `"timeout":0`); err != nil {
			return err
		}
		sleep(ctx, time.Second)
	case faultBlackhole: // bytes vanish, sockets stay open: only heartbeats can tell (~3 x 2 s)
		if err := f.toxic("blackhole", "timeout", `"timeout":0`); err != nil {
			return err
		}
		sleep(ctx, 8*time.Second)
	case faultDown: // connections refused for a few seconds
		f.p.Stop()
		sleep(ctx, 3*time.Second)
		return f.start()
	}
	f.p.Toxics.ResetToxics(context.Background())
	return nil
}

// toxic adds a toxic in both directions.
func (f *faultProxy) toxic(name, typ, attrs string) error {
	for _, stream := range []string{"upstream", "downstream"} {
		js := fmt.Sprintf(`{"name":"%s_%s","type":"%s","stream":"%s","attributes":{%s}}`, name, stream, typ, stream, attrs)
		if _, err := f.p.Toxics.AddToxicJson(strings.NewReader(js)); err != nil {
			return fmt.Errorf("add toxic %s: %w", name, err)
		}
	}
	return nil
}

// start listens again on the same port (retrying briefly: the port was just released).
func (f *faultProxy) start() error {
	var err error
	for range 50 {
		if err = f.p.Start(); err == nil {
			return nil
		}
		time.Sleep(20 * time.Millisecond)
	}
	return fmt.Errorf("restart proxy: %w", err)
}

// heal removes every toxic and makes sure the proxy listens.
func (f *faultProxy) heal() {
	f.p.Toxics.ResetToxics(context.Background())
	_ = f.p.Start() // ErrProxyAlreadyStarted when it runs: fine
}

// close stops the proxy and drops every connection through it.
func (f *faultProxy) close() {
	f.p.Toxics.ResetToxics(context.Background())
	f.p.Stop()
}

// current returns the fault in progress ("" when none).
func (f *faultProxy) current() string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.now
}

// injected returns how many faults of each kind were injected.
func (f *faultProxy) injected() map[string]int {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := make(map[string]int, len(f.counts))
	for k, v := range f.counts {
		out[k] = v
	}
	return out
}

// run injects a fault every `every` (± 25%) until ctx ends, cycling through the kinds in a
// shuffled order so that a 30-second demo sees each of them.
func (f *faultProxy) run(ctx context.Context, every time.Duration, rng *rand.Rand, onErr func(error)) {
	var order []string
	for {
		quiet := every*3/4 + time.Duration(rng.Int64N(int64(every)/2+1))
		if !sleep(ctx, quiet) {
			return
		}
		if len(order) == 0 {
			order = append(order, faultKinds...)
			rng.Shuffle(len(order), func(i, j int) { order[i], order[j] = order[j], order[i] })
		}
		kind := order[0]
		order = order[1:]
		if err := f.inject(ctx, kind); err != nil {
			onErr(err)
			return
		}
	}
}

// sleep waits d or until ctx ends; it reports whether the full time passed.
func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}
