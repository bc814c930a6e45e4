package publisher

import (
	"context"
	"runtime"
	"strconv"
	"testing"

	"github.com/rabbitkit/rabbitkit/internal/testbroker"
	"github.com/rabbitkit/rabbitkit/topology"
)

// BenchmarkStreams: the same messages published over one stream, over 10,000 streams round-robin,
// and with every message in a stream of its own ("new": as many streams as messages, as in
// `examples/publisher -count N -streams N`; "newrand": the same with names in random order, such
// as customer ids). rabbitkit only: PublishAsync from one goroutine, then
// Flush, 256 B to a classic queue, window 512. Each phase gets a new Publisher with a new journal
// (connected before the clock starts) and a purged queue; rounds (-rk.rounds) run the variants in
// rotating order. Reports msg/s and client CPU µs per message of each variant, the ratio of each
// rate to one stream's, and the heap in use after each variant's last phase. Run with:
//
//	go test -run '^$' -bench Streams -benchtime 100000x ./publisher/
//
// b.N (at least 20,000) messages per phase: with -benchtime 100000x "new" publishes 100,000
// messages over 100,000 streams.
func BenchmarkStreams(b *testing.B) {
	url := testbroker.SharedURL(b)
	meter := newCPUMeter()
	type variant struct {
		name    string
		streams int  // 0: every message a stream of its own
		random  bool // stream names in random order (such as customer ids), not ascending
		q       string
		c       cost
		heapMiB float64
	}
	vs := []*variant{{name: "one", streams: 1}, {name: "10k", streams: 10_000}, {name: "new"}, {name: "newrand", random: true}}
	for _, v := range vs {
		v.q = benchQueue(b, url, topology.Classic)
	}
	rounds := max(*benchRounds, 1)
	n := max(b.N, 20_000)
	body := make([]byte, 256)
	ctx := context.Background()
	msgs := make([]Message, n)
	b.ResetTimer()
	for r := range rounds {
		for i := range vs {
			v := vs[(i+r)%len(vs)]
			b.StopTimer()
			for k := range msgs {
				stream := "bench"
				switch {
				case v.random:
					stream = "bench#" + strconv.FormatUint(uint64(k)*0x9E3779B97F4A7C15, 36)
				case v.streams == 0:
					stream = "bench#" + strconv.Itoa(k)
				case v.streams > 1:
					stream = "bench#" + strconv.Itoa(k%v.streams)
				}
				msgs[k] = Message{RoutingKey: v.q, Stream: stream, Body: body}
			}
			purge(b, url, v.q)
			p := benchPublisher(b, url, v.q, topology.Classic)
			runtime.GC()
			b.StartTimer()
			v.c.add(meter.measure(n, func() {
				var last *Receipt
				for k := range msgs {
					last = p.PublishAsync(ctx, msgs[k])
				}
				if err := last.WaitJournaled(ctx); err != nil {
					b.Fatal(err)
				}
				if err := p.Flush(ctx); err != nil {
					b.Fatal(err)
				}
			}))
			b.StopTimer()
			var ms runtime.MemStats
			runtime.ReadMemStats(&ms)
			v.heapMiB = float64(ms.HeapInuse) / (1 << 20)
			closeBench(b, p)
			b.StartTimer()
		}
	}
	b.StopTimer()
	one := vs[0].c.rate()
	for _, v := range vs {
		b.ReportMetric(v.c.rate(), v.name+"_msg/s")
		b.ReportMetric(v.c.selfPerMsg(), v.name+"_cpu_µs/msg")
		b.ReportMetric(v.heapMiB, v.name+"_heap_MiB")
		if v != vs[0] {
			b.ReportMetric(v.c.rate()/one, v.name+"_ratio")
		}
	}
}
