package dedup

import (
	"fmt"
	"runtime"
	"testing"
	"time"

	"github.com/rabbitkit/rabbitkit/protocol"
)

// TestStateSize10kStreams measures the persisted and in-memory size of the dedup state of 10,000
// streams that have carried about a million messages each: every stream has a full body-hash
// history, one in ten has two open gaps and a given-up range, one in a hundred a second epoch.
func TestStateSize10kStreams(t *testing.T) {
	const streams = 10_000
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	tr := newTracker(t, Config{MaxSeen: 100})
	now := t0
	for i := range streams {
		s := protocol.Stamp{Source: "payments-eu-7", Stream: fmt.Sprintf("payments%%2Fexchange/eu.orders.created.%05d", i), Epoch: 0x5eed_0000_0000_0000 + int64(i), Seq: 1}
		tr.Commit(s, 1, now)
		x := tr.streams[KeyOf(s)].wins[0]
		x.w, x.h = 1_000_000+int64(i), 1_000_000+int64(i) // as if a million messages had passed
		seqs := []int64{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16}
		if i%10 == 0 {
			seqs = []int64{1, 2, 4, 5, 8, 9, 10} // gaps at 3 and 6..7
		}
		for _, d := range seqs {
			s.Seq = x.w + d
			tr.Commit(s, BodyHash([]byte(s.String())), now)
		}
		if i%10 == 0 { // a given-up range: MaxSeen+1 commits above a missing number
			base := x.h
			for j := range int64(101) {
				s.Seq = base + 2 + j
				tr.Commit(s, 1, now)
			}
		}
		if i%100 == 0 {
			s.Epoch++
			s.Seq = 1
			tr.Commit(s, 1, now.Add(time.Second))
		}
	}
	tr.Expire(now.Add(time.Minute)) // report the open gaps
	runtime.GC()
	runtime.ReadMemStats(&after)
	heap := int64(after.HeapAlloc) - int64(before.HeapAlloc)
	var enc, keys int
	var buf []byte
	for _, k := range tr.TakeDirty(nil) {
		var ok bool
		buf, ok = tr.AppendState(buf[:0], k)
		if !ok {
			t.Fatalf("%v has no state", k)
		}
		enc += len(buf)
		keys += len(AppendKey(nil, k))
	}
	t.Logf("10,000 streams: persisted %d B state + %d B keys = %.2f MiB; in memory %.2f MiB (%.0f B/stream)",
		enc, keys, float64(enc+keys)/(1<<20), float64(heap)/(1<<20), float64(heap)/streams)
	if tr.Len() != streams {
		t.Fatalf("%d streams", tr.Len())
	}
	if enc+keys > 2<<20 {
		t.Errorf("persisted state %d B exceeds 2 MiB", enc+keys)
	}
	if heap > 8<<20 {
		t.Errorf("in-memory state %d B exceeds 8 MiB", heap)
	}
	runtime.KeepAlive(tr)
}
