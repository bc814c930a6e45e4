package dedup

import (
	"fmt"
	"testing"
	"time"

	"github.com/rabbitkit/rabbitkit/protocol"
)

// benchStamps returns the i-th stamp (0-based) of a workload over n streams. reorder swaps every
// pair of consecutive numbers of a stream; dups delivers every 50th message twice.
type workload struct {
	name    string
	streams int
	reorder bool
	dups    bool
}

func (w workload) stamps(keys []Key, n int) []protocol.Stamp {
	out := make([]protocol.Stamp, 0, n+n/50)
	for i := range n {
		k := keys[i%len(keys)]
		seq := int64(i/len(keys)) + 1
		if w.reorder {
			if seq%2 == 1 {
				seq++
			} else {
				seq--
			}
		}
		s := protocol.Stamp{Source: k.Source, Stream: k.Stream, Epoch: 42, Seq: seq}
		out = append(out, s)
		if w.dups && i%50 == 0 {
			out = append(out, s)
		}
	}
	return out
}

// BenchmarkClassifyCommit measures Classify+Commit per message and compares it with a naive
// exact set (a Go map of every stamp, unbounded memory, measured over up to 1M messages): the
// "x-mapset" metric is our ns/op divided by the map's.
func BenchmarkClassifyCommit(b *testing.B) {
	for _, w := range []workload{
		{"inorder", 1, false, false},
		{"inorder", 1000, false, false},
		{"reorder", 1, true, false},
		{"reorder+dups", 1000, true, true},
	} {
		b.Run(fmt.Sprintf("%s/streams=%d", w.name, w.streams), func(b *testing.B) {
			keys := make([]Key, w.streams)
			for i := range keys {
				keys[i] = Key{Source: "bench-source", Stream: fmt.Sprintf("exchange/orders.%d", i)}
			}
			const chunk = 1 << 16
			tr := newTracker(b, Config{})
			now := t0
			var stamps []protocol.Stamp
			base := int64(0) // per-stream offset of the current chunk
			next := 0
			b.ReportAllocs()
			for b.Loop() {
				if next == len(stamps) {
					b.StopTimer()
					stamps = w.stamps(keys, chunk)
					for i := range stamps {
						stamps[i].Seq += base
					}
					base += int64(chunk / len(keys))
					next = 0
					b.StartTimer()
				}
				s := stamps[next]
				next++
				if tr.Classify(s).Kind == KindNew {
					tr.Commit(s, 0, now)
				}
			}
			ours := float64(b.Elapsed().Nanoseconds()) / float64(b.N)

			// Baseline: a map of every stamp seen, same workload, timed per chunk like ours, over at
			// most 1M messages (it grows without bound: 19M entries took gigabytes).
			set := make(map[protocol.Stamp]struct{})
			var spent time.Duration
			base = 0
			baseN := min(b.N, 1<<20)
			for left := baseN; left > 0; {
				stamps = w.stamps(keys, chunk)
				for i := range stamps {
					stamps[i].Seq += base
				}
				base += int64(chunk / len(keys))
				n := min(left, len(stamps))
				left -= n
				start := time.Now()
				for _, s := range stamps[:n] {
					if _, dup := set[s]; !dup {
						set[s] = struct{}{}
					}
				}
				spent += time.Since(start)
			}
			b.ReportMetric(ours/(float64(spent.Nanoseconds())/float64(baseN)), "x-mapset")
		})
	}
}

// BenchmarkHalfLost is the pathological stream: every other number is lost, so MaxSeen (10,000)
// open gaps are kept and every commit gives the oldest one up.
func BenchmarkHalfLost(b *testing.B) {
	tr := newTracker(b, Config{})
	s := st(1, 0)
	b.ReportAllocs()
	for b.Loop() {
		s.Seq += 2
		if tr.Classify(s).Kind == KindNew {
			tr.Commit(s, 0, t0)
		}
	}
}

// BenchmarkAppendState measures encoding one stream's state, as the store does for every stream a
// batch touched.
func BenchmarkAppendState(b *testing.B) {
	for _, gaps := range []int{0, 10} {
		b.Run(fmt.Sprintf("gaps=%d", gaps), func(b *testing.B) {
			tr := newTracker(b, Config{})
			s := st(1, 1)
			tr.Commit(s, 0, t0)
			for i := range gaps {
				s.Seq = int64(1_000_000 + 3*i)
				tr.Commit(s, 0, t0)
			}
			k := KeyOf(s)
			var buf []byte
			b.ReportAllocs()
			for b.Loop() {
				buf, _ = tr.AppendState(buf[:0], k)
			}
			b.ReportMetric(float64(len(buf)), "bytes")
		})
	}
}

// BenchmarkExpire measures one Expire call over 10,000 streams of which 100 have an open gap.
func BenchmarkExpire(b *testing.B) {
	tr := newTracker(b, Config{GapGrace: time.Hour})
	for i := range 10_000 {
		s := protocol.Stamp{Source: "src", Stream: fmt.Sprint("s", i), Epoch: 1, Seq: 1}
		tr.Commit(s, 0, t0)
		if i%100 == 0 {
			s.Seq = 3
			tr.Commit(s, 0, t0)
		}
	}
	now := t0
	b.ReportAllocs()
	for b.Loop() {
		now = now.Add(time.Millisecond)
		tr.Expire(now)
	}
}
