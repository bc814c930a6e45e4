package journal

import (
	"context"
	"path/filepath"
	"runtime/pprof"
	"strconv"
	"testing"
	"time"
)

// BenchmarkStreams: the publisher's lifecycle (AppendBatch of 512, Read back in pages of 256,
// Delete, each its own fsync'd commit) of 256-byte entries spread over one stream, over 10,000
// streams round-robin, and with every entry in a stream of its own ("new": the stream count grows
// with the message count, as in `examples/publisher -count N -streams N`; "newrand" the same with
// names in random order, such as customer ids). Each variant has a
// journal of its own; they run in ten interleaved slices so that all see the same noise. Reports
// msg/s and CPU µs per message of each, and the rates' ratio to one stream. Each variant runs under
// the pprof label variant=NAME, so that a -cpuprofile can be split with -tagfocus. Run with:
//
//	go test -run '^$' -bench Streams -benchtime 100000x ./journal
func BenchmarkStreams(b *testing.B) {
	type variant struct {
		name    string
		streams int  // 0: every entry a new stream
		random  bool // stream names in random order (hashed), not ascending
		j       *Journal
		after   uint64
		next    int
		wall    time.Duration
		cpu     time.Duration
	}
	vs := []*variant{{name: "one", streams: 1}, {name: "10k", streams: 10_000}, {name: "new"}, {name: "newrand", random: true}}
	for _, v := range vs {
		var j *Journal
		var err error
		// Opened under the variant's label, so that the journal's writer goroutine carries it too.
		pprof.Do(context.Background(), pprof.Labels("variant", v.name), func(context.Context) {
			j, err = Open(filepath.Join(b.TempDir(), v.name+".db"), Options{Source: "bench"})
		})
		if err != nil {
			b.Fatal(err)
		}
		defer j.Close()
		v.j = j
	}
	ctx := context.Background()
	es := make([]*Entry, 512)
	for i := range es {
		es[i] = &Entry{Exchange: "", RoutingKey: "orders", Body: make([]byte, benchBody)}
	}
	ids := make([]uint64, 0, len(es))
	run := func(v *variant, n int) {
		for n > 0 {
			k := min(n, len(es))
			n -= k
			for _, e := range es[:k] {
				e.ID, e.Seq, e.Created = 0, 0, time.Time{}
				if v.streams == 1 {
					e.Stream = "%2F/orders"
				} else {
					i := v.next
					if v.streams > 0 {
						i %= v.streams
					}
					if v.random {
						// Names such as customer ids: each batch lands all over the key space.
						e.Stream = "%2F/orders#" + strconv.FormatUint(uint64(i)*0x9E3779B97F4A7C15, 36)
					} else {
						e.Stream = "%2F/orders#" + strconv.Itoa(i)
					}
				}
				v.next++
			}
			if err := v.j.AppendBatch(ctx, es[:k]); err != nil {
				b.Fatal(err)
			}
			ids = ids[:0]
			for len(ids) < k {
				page, err := v.j.Read(ctx, v.after, 256)
				if err != nil || len(page) == 0 {
					b.Fatal("read", err)
				}
				for _, e := range page {
					ids = append(ids, e.ID)
				}
				v.after = page[len(page)-1].ID
			}
			if err := v.j.Delete(ctx, ids...); err != nil {
				b.Fatal(err)
			}
		}
	}
	n := max(b.N, 20_000)
	const slices = 10
	b.ResetTimer()
	for s := range slices {
		k := n/slices + boolInt(s < n%slices)
		for i := range vs {
			v := vs[(i+s)%len(vs)] // rotating order
			c0, t0 := cpuTime(), time.Now()
			pprof.Do(ctx, pprof.Labels("variant", v.name), func(context.Context) { run(v, k) }) // -tagfocus 'variant=^NAME$'
			v.wall += time.Since(t0)
			v.cpu += cpuTime() - c0
		}
	}
	b.StopTimer()
	one := float64(n) / vs[0].wall.Seconds()
	for _, v := range vs {
		rate := float64(n) / v.wall.Seconds()
		b.ReportMetric(rate, v.name+"_msg/s")
		b.ReportMetric(float64(v.cpu)/float64(time.Microsecond)/float64(n), v.name+"_cpu_µs/msg")
		if v != vs[0] {
			b.ReportMetric(rate/one, v.name+"_ratio")
		}
	}
}
