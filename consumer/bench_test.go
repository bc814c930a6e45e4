package consumer_test

import (
	"context"
	"flag"
	"fmt"
	"path/filepath"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/rabbitkit/rabbitkit/consumer"
	"github.com/rabbitkit/rabbitkit/consumer/dedup"
	"github.com/rabbitkit/rabbitkit/internal/testbroker"
	"github.com/rabbitkit/rabbitkit/metrics"
	"github.com/rabbitkit/rabbitkit/protocol"
	"github.com/rabbitkit/rabbitkit/topology"
)

// Run with a fixed count, e.g.
//
//	go test -run '^$' -bench BenchmarkDrain -benchtime 20000x ./consumer/
//
// Each iteration is one message. The queue is pre-filled (not timed), then drained by raw
// amqp091-go (prefetch 1000, multiple-ack every 100) and by the rabbitkit consumer (dedup, bbolt
// store with fsync'd group commits, batched multiple-acks), both in the same run.
func BenchmarkDrain(b *testing.B) {
	for _, size := range []int{256, 4096} {
		b.Run(fmt.Sprintf("%dB", size), func(b *testing.B) {
			if b.N == 1 {
				return // the framework's probe run: nothing to learn from one message
			}
			url := testbroker.SharedURL(b)
			q := testbroker.Name(b, "bench")
			testbroker.DeleteQueues(b, url, q, q+".parked")
			n := b.N
			conn, err := amqp.Dial(url)
			if err != nil {
				b.Fatal(err)
			}
			defer conn.Close()
			b.StopTimer()
			// Alternate rounds and take medians: the machine is shared, and its load drifts.
			var raws, kits, p50s, p99s []float64
			for range *benchRounds {
				fill(b, conn, q, n, size)
				raws = append(raws, drainRaw(b, conn, q, n))
				fill(b, conn, q, n, size)
				k, lat := drainKit(b, url, q, n)
				kits, p50s, p99s = append(kits, k), append(p50s, lat.p50), append(p99s, lat.p99)
				b.Logf("round: raw %.0f msgs/s, rabbitkit %.0f msgs/s", raws[len(raws)-1], k)
			}
			rawRate, kitRate := median(raws), median(kits)
			lat := latency{p50: median(p50s), p99: median(p99s)}
			b.ReportMetric(rawRate, "raw_msgs/s")
			b.ReportMetric(kitRate, "kit_msgs/s")
			b.ReportMetric(kitRate/rawRate, "ratio")
			b.ReportMetric(lat.p50*1e3, "ack_p50_ms")
			b.ReportMetric(lat.p99*1e3, "ack_p99_ms")
		})
	}
}

var benchNoSync = flag.Bool("rk.nosync", false, "BenchmarkDrain: bbolt without fsync (to see what the fsync costs)")

var benchKitPrefetch = flag.Int("rk.kitprefetch", 0, "BenchmarkDrain: the rabbitkit consumer's prefetch (0: DefaultPrefetch, as the raw baseline)")

var benchRounds = flag.Int("rk.rounds", 3, "BenchmarkDrain: alternating raw/rabbitkit rounds (medians are reported)")

func median(v []float64) float64 {
	v = slices.Clone(v)
	slices.Sort(v)
	return v[len(v)/2]
}

func fill(b *testing.B, conn *amqp.Connection, q string, n, size int) {
	ch, err := conn.Channel()
	if err != nil {
		b.Fatal(err)
	}
	defer ch.Close()
	if _, err := ch.QueueDeclare(q, true, false, false, false, amqp.Table{amqp.QueueTypeArg: "classic"}); err != nil {
		b.Fatal(err)
	}
	if err := ch.Confirm(false); err != nil {
		b.Fatal(err)
	}
	body := make([]byte, size)
	var window []*amqp.DeferredConfirmation
	for i := range n {
		s := protocol.Stamp{Source: "bench", Epoch: 1, Stream: fmt.Sprint("s", i%16), Seq: int64(i/16 + 1)}
		dc, err := ch.PublishWithDeferredConfirm("", q, false, false, amqp.Publishing{MessageId: s.String(), DeliveryMode: amqp.Persistent, Body: body})
		if err != nil {
			b.Fatal(err)
		}
		window = append(window, dc)
		if len(window) == 512 || i == n-1 {
			for _, dc := range window {
				if !dc.Wait() {
					b.Fatal("fill: publish not confirmed")
				}
			}
			window = window[:0]
		}
	}
}

func drainRaw(b *testing.B, conn *amqp.Connection, q string, n int) float64 {
	ch, err := conn.Channel()
	if err != nil {
		b.Fatal(err)
	}
	defer ch.Close()
	if err := ch.Qos(1000, 0, false); err != nil {
		b.Fatal(err)
	}
	dels, err := ch.Consume(q, "raw", false, false, false, false, nil)
	if err != nil {
		b.Fatal(err)
	}
	var t0 time.Time // from the first delivery: connection set-up is not measured
	for i := 1; i <= n; i++ {
		d := <-dels
		if i == 1 {
			b.StartTimer()
			t0 = time.Now()
		}
		if i%100 == 0 || i == n {
			if err := d.Ack(true); err != nil {
				b.Fatal(err)
			}
		}
	}
	el := time.Since(t0)
	b.StopTimer()
	_ = ch.Cancel("raw", false)
	return float64(n) / el.Seconds()
}

// ackRecorder counts acked deliveries and keeps their handler-to-ack latencies.
type ackRecorder struct {
	metrics.Nop
	acked atomic.Int64
	mu    sync.Mutex
	lat   []float64
}

func (r *ackRecorder) Observe(name string, v float64) {
	if name != consumer.MetricAckSeconds {
		return
	}
	r.acked.Add(1)
	r.mu.Lock()
	r.lat = append(r.lat, v)
	r.mu.Unlock()
}

type latency struct{ p50, p99 float64 }

func drainKit(b *testing.B, url, q string, n int) (float64, latency) {
	rec := &ackRecorder{}
	store, err := consumer.OpenBoltStore(filepath.Join(b.TempDir(), "bench.db"), consumer.BoltOptions{NoSync: *benchNoSync})
	if err != nil {
		b.Fatal(err)
	}
	defer store.Close()
	c, err := consumer.NewWithStore(consumer.Config{
		URLs: []string{url}, Queue: q, Prefetch: *benchKitPrefetch,
		Topology: topology.Topology{Queues: []topology.Queue{{Name: q}}},
		Metrics:  rec, Logger: quietLogger(),
	}, store)
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	var handled atomic.Int64
	var t0 atomic.Pointer[time.Time] // from the first delivery: connection set-up is not measured
	go func() {
		done <- c.Run(ctx, func(context.Context, *consumer.Message) error {
			if handled.Add(1) == 1 {
				now := time.Now()
				t0.Store(&now)
			}
			return nil
		})
	}()
	for rec.acked.Load() < int64(n) {
		time.Sleep(200 * time.Microsecond)
	}
	el := time.Since(*t0.Load()) // ns/op covers the raw drain only; read the reported rates
	b.StopTimer()
	cancel()
	if err := <-done; err != nil {
		b.Fatal(err)
	}
	if h := handled.Load(); h != int64(n) {
		b.Fatalf("handled %d of %d", h, n)
	}
	rec.mu.Lock()
	defer rec.mu.Unlock()
	slices.Sort(rec.lat)
	return float64(n) / el.Seconds(), latency{p50: rec.lat[len(rec.lat)/2], p99: rec.lat[len(rec.lat)*99/100]}
}

// BenchmarkDedupMemory measures the dedup state of 10,000 streams, each with 1,000 messages
// committed and a tenth of them with an open gap: heap bytes held and encoded (stored) bytes.
func BenchmarkDedupMemory(b *testing.B) {
	for _, hist := range []int{0, -1} {
		name := map[int]string{0: "hash-history-16", -1: "no-hash-history"}[hist]
		b.Run(name, func(b *testing.B) { benchDedupMemory(b, dedup.Config{HashHistory: hist}) })
	}
}

func benchDedupMemory(b *testing.B, cfg dedup.Config) {
	const streams = 10000
	for range b.N {
		runtime.GC()
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		tr, err := dedup.New(cfg)
		if err != nil {
			b.Fatal(err)
		}
		now := time.Now()
		for i := range streams {
			s := protocol.Stamp{Source: "bench-source", Epoch: 1, Stream: fmt.Sprintf("orders/customer-%05d", i)}
			for seq := int64(1); seq <= 1000; seq++ {
				if i%10 == 0 && seq == 500 {
					continue // an open gap
				}
				s.Seq = seq
				tr.Commit(s, dedup.BodyHash([]byte("body")), now)
			}
		}
		keys := tr.TakeDirty(nil)
		var encoded int
		for _, k := range keys {
			buf, _ := tr.AppendState(nil, k)
			encoded += len(buf) + len(dedup.AppendKey(nil, k))
		}
		runtime.GC()
		runtime.ReadMemStats(&after)
		heap := float64(after.HeapAlloc) - float64(before.HeapAlloc)
		b.ReportMetric(heap/(1<<20), "heap_MiB")
		b.ReportMetric(heap/streams, "heap_B/stream")
		b.ReportMetric(float64(encoded)/(1<<20), "stored_MiB")
		runtime.KeepAlive(tr)
	}
}
