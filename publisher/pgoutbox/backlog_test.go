package pgoutbox_test

import (
	"context"
	"fmt"
	"os"
	"runtime"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rabbitkit/rabbitkit/internal/testbroker"
	"github.com/rabbitkit/rabbitkit/internal/testutil"
	"github.com/rabbitkit/rabbitkit/publisher"
	"github.com/rabbitkit/rabbitkit/publisher/pgoutbox"
)

// heapPeak samples runtime.MemStats.HeapInuse every 25 ms until stopped.
type heapPeak struct {
	peak atomic.Uint64
	stop chan struct{}
	wg   sync.WaitGroup
}

func sampleHeap() *heapPeak {
	h := &heapPeak{stop: make(chan struct{})}
	h.wg.Go(func() {
		t := time.NewTicker(25 * time.Millisecond)
		defer t.Stop()
		var ms runtime.MemStats
		for {
			runtime.ReadMemStats(&ms)
			if ms.HeapInuse > h.peak.Load() {
				h.peak.Store(ms.HeapInuse)
			}
			select {
			case <-h.stop:
				return
			case <-t.C:
			}
		}
	})
	return h
}

func (h *heapPeak) done() uint64 {
	close(h.stop)
	h.wg.Wait()
	return h.peak.Load()
}

const mib = 1 << 20

// TestRelayBacklogHeap: a backlog of committed rows piles up while the relay holds the lease but
// cannot reach the broker (its proxy is down); then the broker comes back and the backlog drains.
// The process's heap (HeapInuse, sampled every 25 ms over the whole run, the writers included)
// must stay under 64 MiB: the relay pages through the outbox, it never loads the backlog. The
// drain rate is reported beside raw amqp091-go pipelined confirms of the same messages.
// RABBITKIT_OUTBOX_BACKLOG_ROWS sets the backlog (default 16,000; docs/BENCHMARKS.md has the
// 1,000,000 run: RABBITKIT_OUTBOX_BACKLOG_ROWS=1000000 go test -run TestRelayBacklogHeap -v
// -timeout 30m ./publisher/pgoutbox/). RABBITKIT_OUTBOX_READBATCH sets the relay's page size
// (default pgoutbox.DefaultRelayReadBatch).
func TestRelayBacklogHeap(t *testing.T) {
	testbroker.SkipShort(t)
	rows := 16_000
	if s := os.Getenv("RABBITKIT_OUTBOX_BACKLOG_ROWS"); s != "" {
		v, err := strconv.Atoi(s)
		if err != nil || v < 1000 {
			t.Fatalf("RABBITKIT_OUTBOX_BACKLOG_ROWS=%q: want an integer >= 1000", s)
		}
		rows = v
	}
	const writers, batch, streamsPerWriter = 4, 2000, 16
	rows = (rows + writers*batch - 1) / (writers * batch) * (writers * batch)
	ctx := context.Background()
	e := newEnv(t, 10)
	px := testbroker.NewProxy(t, e.url)
	o := open(t, e.pool, pgoutbox.Options{PollInterval: 20 * time.Millisecond})
	m := &countingRecorder{}
	cfg := e.relayConfig(t, m)
	cfg.URLs = []string{px.URL}
	cfg.MaxInFlight = relayWindow
	pageRows := pgoutbox.DefaultRelayReadBatch
	if v, _ := strconv.Atoi(os.Getenv("RABBITKIT_OUTBOX_READBATCH")); v > 0 {
		pageRows = v
	}
	cfg.ReadBatch = pageRows
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	base := ms.HeapInuse
	heap := sampleHeap()

	px.Down(t) // the broker is away: the backlog piles up
	runRelay(t, o, cfg)
	testutil.Eventually(t, 10*time.Second, "the relay holds the lease", o.Relaying)
	t0 := time.Now()
	var wg sync.WaitGroup
	for w := range writers {
		wg.Go(func() {
			msgs := make([]publisher.Message, batch)
			for i := range msgs {
				msgs[i] = publisher.Message{RoutingKey: e.queue, Stream: fmt.Sprintf("w%d-s%d", w, i%streamsPerWriter), Body: body256}
			}
			for done := 0; done < rows/writers; done += batch {
				tx, err := e.pool.Begin(ctx)
				if err != nil {
					t.Error(err)
					return
				}
				if _, err := o.PublishBatchTx(ctx, tx, msgs); err != nil {
					_ = tx.Rollback(ctx)
					t.Error(err)
					return
				}
				if err := tx.Commit(ctx); err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	if t.Failed() {
		return
	}
	fill := time.Since(t0)
	bl, err := o.Backlog(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if bl.Pending != rows {
		t.Fatalf("backlog %d rows, want %d", bl.Pending, rows)
	}
	if c := m.get(publisher.MetricConfirmed); c != 0 {
		t.Fatalf("%v confirmed while the broker was away", c)
	}
	up := time.Now()
	px.Up(t)
	t1 := waitConfirmed(t, m, 0, 1, time.Minute) // the relay's reconnect backoff, not its speed
	waitConfirmed(t, m, 0, rows, time.Duration(rows/100+60)*time.Second)
	drain := time.Since(t1)
	peak := heap.done()
	purgeQueue(t, e.url, e.queue)

	// The raw baseline, twice: as many messages through the same in-process proxy as the relay
	// (its path and the same queue depth at the end, so the ratio), and 100,000 straight to the
	// broker (what the proxy and the depth cost).
	raw := rawPipelined(t, px.URL, e.queue, body256, rows, relayWindow, true)
	purgeQueue(t, e.url, e.queue)
	n := min(rows, 100_000)
	direct := rawPipelined(t, e.url, e.queue, body256, n, relayWindow, true)
	purgeQueue(t, e.url, e.queue)
	rate := float64(rows) / drain.Seconds()
	t.Logf("backlog %d rows (committed in %v while the broker was away); first confirm %v after it came back, then drained in %v (pages of %d rows): %.0f msg/s; raw amqp091-go (v2-stamp message-id, window %d) through the same proxy %.0f msg/s: ratio %.2f (%d msgs straight to the broker %.0f msg/s: %.2f); HeapInuse before %.1f MiB, peak %.1f MiB",
		rows, fill.Round(time.Millisecond), t1.Sub(up).Round(time.Millisecond), drain.Round(time.Millisecond), pageRows, rate, relayWindow, raw, rate/raw, n, direct, rate/direct, float64(base)/mib, float64(peak)/mib)
	if peak >= 64*mib {
		t.Errorf("heap peaked at %.1f MiB relaying a backlog of %d rows, want < 64 MiB", float64(peak)/mib, rows)
	}
}
