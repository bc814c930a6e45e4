package consumer_test

import (
	"context"
	"flag"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
	bolt "go.etcd.io/bbolt"

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
			var raws, kits, p50s, p99s, cpus, wrs []float64
			for range *benchRounds {
				fill(b, conn, q, n, size)
				raws = append(raws, drainRaw(b, conn, q, n))
				fill(b, conn, q, n, size)
				cpu0, io0 := cpuTime(), writeBytes()
				k, lat := drainKit(b, url, q, n)
				cpus = append(cpus, float64(cpuTime()-cpu0)/float64(time.Microsecond)/float64(n))
				wrs = append(wrs, float64(writeBytes()-io0)/1024/float64(n))
				kits, p50s, p99s = append(kits, k), append(p50s, lat.p50), append(p99s, lat.p99)
				b.Logf("round: raw %.0f msgs/s, rabbitkit %.0f msgs/s", raws[len(raws)-1], k)
			}
			rawRate, kitRate := median(raws), median(kits)
			lat := latency{p50: median(p50s), p99: median(p99s)}
			b.ReportMetric(rawRate, "raw_msgs/s")
			b.ReportMetric(kitRate, "kit_msgs/s")
			b.ReportMetric(kitRate/rawRate, "ratio")
			// Each round's own ratio (kit after raw, same minute): their median and spread.
			ratios := make([]float64, len(raws))
			for i := range raws {
				ratios[i] = kits[i] / raws[i]
			}
			b.ReportMetric(median(ratios), "round_ratio_median")
			b.ReportMetric(slices.Min(ratios), "round_ratio_min")
			b.ReportMetric(slices.Max(ratios), "round_ratio_max")
			b.ReportMetric(lat.p50*1e3, "ack_p50_ms")
			b.ReportMetric(lat.p99*1e3, "ack_p99_ms")
			b.ReportMetric(median(cpus), "kit_cpu_µs/msg") // this process, store open to close
			b.ReportMetric(median(wrs), "kit_written_KiB/msg")
		})
	}
}

// BenchmarkDrainRedelivered: what Config.MaxCrashes costs where it works, on redeliveries. The
// queue is filled, every message is delivered once to a plain channel that never acks and then
// closes (so all come back flagged redelivered, as after a consumer crash), and the consumer
// drains them: with the default MaxCrashes (a start recorded, one fsync'd commit, before each
// redelivered message's handler) and with MaxCrashes -1 (no counting), alternating, in the same
// run. First deliveries cost nothing extra: BenchmarkDrain.
//
//	go test -run '^$' -bench DrainRedelivered -benchtime 5000x ./consumer/ -rk.rounds=3
func BenchmarkDrainRedelivered(b *testing.B) {
	if b.N == 1 {
		return
	}
	url := testbroker.SharedURL(b)
	q := testbroker.Name(b, "bench-redeliv")
	testbroker.DeleteQueues(b, url, q, q+".parked")
	n := b.N
	conn, err := amqp.Dial(url)
	if err != nil {
		b.Fatal(err)
	}
	defer conn.Close()
	b.StopTimer()
	redeliverAll := func() {
		ch, err := conn.Channel()
		if err != nil {
			b.Fatal(err)
		}
		if err := ch.Qos(n, 0, false); err != nil {
			b.Fatal(err)
		}
		dels, err := ch.Consume(q, "", false, false, false, false, nil)
		if err != nil {
			b.Fatal(err)
		}
		for range n {
			<-dels
		}
		_ = ch.Close() // unacked: requeued, redelivered
	}
	var counted, uncounted []float64
	for range *benchRounds {
		for _, maxCrashes := range []int{0, -1} {
			fill(b, conn, q, n, 256)
			redeliverAll()
			rate, _ := drainKitWith(b, url, q, n, b.TempDir(), func(c *consumer.Config) { c.MaxCrashes = maxCrashes })
			if maxCrashes == 0 {
				counted = append(counted, rate)
			} else {
				uncounted = append(uncounted, rate)
			}
		}
		b.Logf("round: counted %.0f msgs/s, uncounted %.0f msgs/s", counted[len(counted)-1], uncounted[len(uncounted)-1])
	}
	b.ReportMetric(median(counted), "counted_msgs/s")
	b.ReportMetric(median(uncounted), "uncounted_msgs/s")
	b.ReportMetric(median(counted)/median(uncounted), "ratio")
}

var benchNoSync = flag.Bool("rk.nosync", false, "BenchmarkDrain: bbolt without fsync (to see what the fsync costs)")

var benchKitPrefetch = flag.Int("rk.kitprefetch", 0, "BenchmarkDrain: the rabbitkit consumer's prefetch (0: DefaultPrefetch, as the raw baseline)")

var benchHeapProf = flag.String("rk.heapprof", "", "BenchmarkDrain*: write a heap profile (after a GC) to this file at the end of each rabbitkit drain, before the consumer closes")

var benchStreamVariants = flag.String("rk.streamvariants", "", "BenchmarkDrainStreams: run only these variants (comma-separated: one,10k,new,newrand; default all); ratios are to the first one run")

var benchRounds = flag.Int("rk.rounds", 3, "BenchmarkDrain: alternating raw/rabbitkit rounds (medians are reported)")

func median(v []float64) float64 {
	v = slices.Clone(v)
	slices.Sort(v)
	return v[len(v)/2]
}

func fill(b *testing.B, conn *amqp.Connection, q string, n, size int) {
	fillStamps(b, conn, q, n, size, func(i int) (string, int64) { return fmt.Sprint("s", i%16), int64(i/16 + 1) })
}

// fillStamps publishes n persistent messages to q (declared classic), the i-th stamped with the
// stream and sequence number that streamOf(i) returns, confirmed in windows of 512.
func fillStamps(b *testing.B, conn *amqp.Connection, q string, n, size int, streamOf func(i int) (string, int64)) {
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
	testbroker.PublishStamped(b, ch, "", func(string) string { return q }, n, body, streamOf)
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

func (r *ackRecorder) Observe(name string, v float64, _ ...metrics.Label) {
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
	return drainKitIn(b, url, q, n, b.TempDir())
}

// drainKitIn is drainKit with its store at dir/bench.db.
func drainKitIn(b *testing.B, url, q string, n int, dir string) (float64, latency) {
	return drainKitWith(b, url, q, n, dir, nil)
}

// drainKitWith is drainKitIn with tune (when not nil) applied to the consumer's Config.
func drainKitWith(b *testing.B, url, q string, n int, dir string, tune func(*consumer.Config)) (float64, latency) {
	rec := &ackRecorder{}
	store, err := consumer.OpenBoltStore(filepath.Join(dir, "bench.db"), consumer.BoltOptions{NoSync: *benchNoSync})
	if err != nil {
		b.Fatal(err)
	}
	defer store.Close()
	cfg := consumer.Config{
		URLs: []string{url}, Queue: q, Prefetch: *benchKitPrefetch,
		Topology: topology.Topology{Queues: []topology.Queue{{Name: q}}},
		Metrics:  rec, Logger: quietLogger(),
	}
	if tune != nil {
		tune(&cfg)
	}
	c, err := consumer.NewWithStore(cfg, store)
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close(context.Background())
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
	if *benchHeapProf != "" { // the live heap with everything drained still held by the consumer
		runtime.GC()
		if f, err := os.Create(*benchHeapProf); err == nil {
			_ = pprof.WriteHeapProfile(f)
			_ = f.Close()
		}
	}
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

// BenchmarkDrainStreams: the rabbitkit consumer (dedup, fsync'd bbolt store) drains the same
// pre-filled queue of b.N messages (at least 20,000; 256 B, classic) whose stamps lie on one stream,
// on 10,000 streams round-robin, or with every message in a stream of its own ("new": as many
// streams as messages, as in `examples/publisher -count N -streams N` read by `examples/consumer`;
// "newrand": the same with names in random order, such as customer ids). Rounds (-rk.rounds) run
// the variants in rotating order, each with a new store and a new consumer, so that all see the
// same noise. Per variant it reports the median msg/s (from the first delivery to the last ack),
// its ratio to one stream's (of the medians, and the min and max of each round's own ratio), the
// CPU µs of this process and the KiB written to storage (/proc/self/io) per message, the peak heap
// in use while draining, the process's peak RSS during the drain (VmHWM after a reset through
// /proc/self/clear_refs; 0 where the kernel cannot reset it) and the store file's size. Each drain
// runs under the pprof label variant=NAME (the consumer's and the store's goroutines inherit it):
// split a -cpuprofile with -tagfocus 'variant=^newrand$'. -rk.streamvariants picks variants,
// -rk.heapprof writes a heap profile at the end of each drain. Run with:
//
//	go test -run '^$' -bench DrainStreams -benchtime 100000x ./consumer/ -rk.rounds=3
func BenchmarkDrainStreams(b *testing.B) {
	if b.N == 1 {
		return // the framework's probe run
	}
	type variant struct {
		name    string
		streams int  // 0: every message a stream of its own
		random  bool // stream names in random order, not ascending
		rates   []float64
		heap    []float64 // peak HeapInuse during the drain, MiB
		rss     []float64 // peak RSS during the drain, MiB (0 if the kernel cannot reset it)
		file    float64   // store file size after the drain, MiB
		cpu     []float64 // this process's CPU µs per message during the drain
		wr      []float64 // KiB written to storage per message during the drain (/proc/self/io)
	}
	vs := []*variant{{name: "one", streams: 1}, {name: "10k", streams: 10_000}, {name: "new"}, {name: "newrand", random: true}}
	if *benchStreamVariants != "" {
		vs = slices.DeleteFunc(vs, func(v *variant) bool { return !slices.Contains(strings.Split(*benchStreamVariants, ","), v.name) })
		if len(vs) == 0 {
			b.Fatalf("-rk.streamvariants %q: no such variant", *benchStreamVariants)
		}
	}
	url := testbroker.SharedURL(b)
	q := testbroker.Name(b, "bench")
	testbroker.DeleteQueues(b, url, q, q+".parked")
	n := max(b.N, 20_000)
	conn, err := amqp.Dial(url)
	if err != nil {
		b.Fatal(err)
	}
	defer conn.Close()
	b.StopTimer() // only the drains are timed (ns/op is of every drain together; read the reported rates)
	for r := range max(*benchRounds, 1) {
		for i := range vs {
			v := vs[(i+r)%len(vs)]
			fillStamps(b, conn, q, n, 256, func(i int) (string, int64) {
				switch {
				case v.random:
					return "orders#" + strconv.FormatUint(uint64(i)*0x9E3779B97F4A7C15, 36), 1
				case v.streams == 0:
					return "orders#" + strconv.Itoa(i), 1
				case v.streams > 1:
					return "orders#" + strconv.Itoa(i%v.streams), int64(i/v.streams + 1)
				}
				return "orders", int64(i + 1)
			})
			runtime.GC()
			debug.FreeOSMemory()
			rssReset := os.WriteFile("/proc/self/clear_refs", []byte("5"), 0) == nil
			stop := make(chan struct{})
			var peak atomic.Uint64
			var wg sync.WaitGroup
			wg.Go(func() {
				var ms runtime.MemStats
				for {
					runtime.ReadMemStats(&ms)
					if ms.HeapInuse > peak.Load() {
						peak.Store(ms.HeapInuse)
					}
					select {
					case <-stop:
						return
					case <-time.After(50 * time.Millisecond):
					}
				}
			})
			dir := b.TempDir()
			var rate float64
			cpu0, io0 := cpuTime(), writeBytes()
			b.StartTimer()                                                                          // drainKitIn stops it
			pprof.Do(context.Background(), pprof.Labels("variant", v.name), func(context.Context) { // -tagfocus 'variant=^NAME$'
				rate, _ = drainKitIn(b, url, q, n, dir)
			})
			v.cpu = append(v.cpu, float64(cpuTime()-cpu0)/float64(time.Microsecond)/float64(n))
			v.wr = append(v.wr, float64(writeBytes()-io0)/1024/float64(n))
			close(stop)
			wg.Wait()
			rss := 0.0
			if rssReset {
				rss = float64(vmHWM()) / (1 << 20)
			}
			if fi, err := os.Stat(filepath.Join(dir, "bench.db")); err == nil {
				v.file = float64(fi.Size()) / (1 << 20)
			}
			v.rates, v.heap, v.rss = append(v.rates, rate), append(v.heap, float64(peak.Load())/(1<<20)), append(v.rss, rss)
			b.Logf("round %d %s: %.0f msg/s, %.1f CPU µs/msg, %.2f KiB written/msg, peak heap %.1f MiB, peak RSS %.1f MiB",
				r, v.name, rate, v.cpu[len(v.cpu)-1], v.wr[len(v.wr)-1], v.heap[len(v.heap)-1], rss)
		}
	}
	one := median(vs[0].rates)
	for _, v := range vs {
		b.ReportMetric(median(v.rates), v.name+"_msg/s")
		b.ReportMetric(median(v.heap), v.name+"_peakheap_MiB")
		b.ReportMetric(median(v.rss), v.name+"_peakrss_MiB")
		b.ReportMetric(v.file, v.name+"_store_MiB")
		b.ReportMetric(median(v.cpu), v.name+"_cpu_µs/msg")
		b.ReportMetric(median(v.wr), v.name+"_written_KiB/msg")
		if v != vs[0] {
			b.ReportMetric(median(v.rates)/one, v.name+"_ratio")
			lo, hi := math.Inf(1), math.Inf(-1)
			for k := range v.rates { // the ratio within each round, against that round's one stream
				x := v.rates[k] / vs[0].rates[k]
				lo, hi = math.Min(lo, x), math.Max(hi, x)
			}
			b.ReportMetric(lo, v.name+"_ratio_min")
			b.ReportMetric(hi, v.name+"_ratio_max")
		}
	}
}

// cpuTime returns the CPU time (user + system) this process has used.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// writeBytes returns the bytes this process has caused to be written to storage
// (/proc/self/io write_bytes), or 0.
func writeBytes() uint64 {
	buf, err := os.ReadFile("/proc/self/io")
	if err != nil {
		return 0
	}
	for line := range strings.Lines(string(buf)) {
		if rest, ok := strings.CutPrefix(line, "write_bytes:"); ok {
			n, _ := strconv.ParseUint(strings.TrimSpace(rest), 10, 64)
			return n
		}
	}
	return 0
}

// vmHWM returns the process's peak resident set size in bytes (/proc/self/status VmHWM), or 0.
func vmHWM() uint64 {
	buf, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0
	}
	for line := range strings.Lines(string(buf)) {
		if rest, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			kb, _ := strconv.ParseUint(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
			return kb << 10
		}
	}
	return 0
}

// BenchmarkStoreStreams commits dedup states straight to a BoltStore (fsync'd; no broker, no
// consumer): 100,000 messages in batches of -rk.storebatch, their states produced by a
// dedup.Tracker, with the stamps of BenchmarkDrainStreams' variants (one stream, 10,000 round-robin,
// a stream per message with ascending or random names). Per variant: msg/s, CPU µs and KiB written
// to storage per message, and the store file's size. Run with:
//
//	go test -run '^$' -bench StoreStreams -benchtime 1x ./consumer/
func BenchmarkStoreStreams(b *testing.B) {
	const n = 100_000
	for _, v := range []struct {
		name    string
		streams int
		random  bool
	}{{"one", 1, false}, {"10k", 10_000, false}, {"new", 0, false}, {"newrand", 0, true}} {
		b.Run(v.name, func(b *testing.B) {
			for range b.N {
				store, err := consumer.OpenBoltStore(filepath.Join(b.TempDir(), "store.db"), consumer.BoltOptions{NoSync: *benchNoSync})
				if err != nil {
					b.Fatal(err)
				}
				tr, err := dedup.New(dedup.Config{})
				if err != nil {
					b.Fatal(err)
				}
				ctx := context.Background()
				now := time.Now()
				hash := dedup.BodyHash(make([]byte, 256))
				cpu0, io0, t0 := cpuTime(), writeBytes(), time.Now()
				var keys []dedup.Key
				for i := 0; i < n; {
					for end := min(i+*benchStoreBatch, n); i < end; i++ {
						s := protocol.Stamp{Source: "bench", Epoch: 1, Stream: "orders", Seq: int64(i + 1)}
						switch {
						case v.random:
							s.Stream, s.Seq = "orders#"+strconv.FormatUint(uint64(i)*0x9E3779B97F4A7C15, 36), 1
						case v.streams == 0:
							s.Stream, s.Seq = "orders#"+strconv.Itoa(i), 1
						case v.streams > 1:
							s.Stream, s.Seq = "orders#"+strconv.Itoa(i%v.streams), int64(i/v.streams+1)
						}
						tr.Commit(s, hash, now)
					}
					keys = tr.TakeDirty(keys[:0])
					states := make([]consumer.StreamState, 0, len(keys))
					for _, k := range keys {
						st, _ := tr.AppendState(nil, k)
						states = append(states, consumer.StreamState{Key: k, State: st})
					}
					err := store.Commit(ctx, &consumer.Batch[*bolt.Tx]{States: func([]bool) []consumer.StreamState { return states }})
					if err != nil {
						b.Fatal(err)
					}
				}
				el := time.Since(t0)
				b.ReportMetric(float64(n)/el.Seconds(), "msg/s")
				b.ReportMetric(float64(cpuTime()-cpu0)/float64(time.Microsecond)/n, "cpu_µs/msg")
				b.ReportMetric(float64(writeBytes()-io0)/1024/n, "written_KiB/msg")
				if fi, err := os.Stat(store.Path()); err == nil {
					b.ReportMetric(float64(fi.Size())/(1<<20), "store_MiB")
				}
				if err := store.Close(); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

var benchStoreBatch = flag.Int("rk.storebatch", 128, "BenchmarkStoreStreams: messages per commit")
