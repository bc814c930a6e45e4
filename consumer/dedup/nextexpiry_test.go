package dedup

import (
	"math/rand/v2"
	"testing"
	"time"
)

func TestNextExpiryTable(t *testing.T) {
	cfg := Config{GapGrace: time.Second, EpochRetention: time.Minute, IdleRetention: time.Hour}
	tr := newTracker(t, cfg)
	k := KeyOf(st(1, 1))
	if _, ok := tr.NextExpiry(k); ok {
		t.Fatal("unknown stream has an expiry")
	}
	tr.Commit(st(1, 1), 0, t0)
	if at, ok := tr.NextExpiry(k); ok {
		t.Fatalf("a stream without gaps or other epochs expires at %v", at)
	}
	tr.Commit(st(1, 3), 0, t0.Add(time.Second)) // gap 2 noticed at t0+1s
	if at, ok := tr.NextExpiry(k); !ok || !at.Equal(t0.Add(2*time.Second)) {
		t.Fatalf("open gap: NextExpiry = %v, %v; want t0+2s", at, ok)
	}
	tr.Expire(t0.Add(2 * time.Second)) // reported: now only the idle compaction is due
	if at, ok := tr.NextExpiry(k); !ok || !at.Equal(t0.Add(time.Second+time.Hour)) {
		t.Fatalf("reported gap: NextExpiry = %v, %v; want t0+1s+1h", at, ok)
	}
	tr.Commit(st(2, 1), 0, t0.Add(10*time.Second)) // epoch 1 now old: retired at t0+1s+1m
	if at, ok := tr.NextExpiry(k); !ok || !at.Equal(t0.Add(time.Second+time.Minute)) {
		t.Fatalf("old epoch: NextExpiry = %v, %v; want t0+1s+1m", at, ok)
	}

	f := newTracker(t, Config{ForgetAfter: 48 * time.Hour, IdleRetention: 24 * time.Hour})
	f.Commit(st(1, 1), 0, t0)
	if at, ok := f.NextExpiry(k); !ok || !at.Equal(t0.Add(48*time.Hour)) {
		t.Fatalf("ForgetAfter: NextExpiry = %v, %v; want t0+48h", at, ok)
	}
}

// NextExpiry is exact for a tracker that has just loaded the stream: Expire just before it changes
// nothing, Expire at it changes the stream.
func TestNextExpiryIsExact(t *testing.T) {
	cfgs := []Config{
		{GapGrace: time.Second, EpochRetention: time.Minute, IdleRetention: time.Hour, MaxSeen: 8, MaxEpochs: 3},
		{GapGrace: time.Second, EpochRetention: time.Minute, IdleRetention: time.Hour, ForgetAfter: 2 * time.Hour},
	}
	for ci, cfg := range cfgs {
		r := rand.New(rand.NewPCG(uint64(ci), 7))
		for iter := range 2000 {
			tr := newTracker(t, cfg)
			k := KeyOf(st(1, 1))
			now := t0
			epoch := int64(1)
			seq := map[int64]int64{}
			for range 1 + r.IntN(30) {
				now = now.Add(time.Duration(r.IntN(20_000)) * time.Millisecond)
				switch r.IntN(10) {
				case 0:
					epoch += int64(r.IntN(2))
				case 1:
					tr.Expire(now)
					continue
				}
				seq[epoch] += 1 + int64(r.IntN(3))
				tr.Commit(st(epoch, seq[epoch]), 0, now)
				if r.IntN(4) == 0 && seq[epoch] > 2 { // fill an older number sometimes
					tr.Commit(st(epoch, seq[epoch]-1-int64(r.IntN(2))), 0, now)
				}
			}
			buf, ok := tr.AppendState(nil, k)
			if !ok {
				continue
			}
			load := func() *Tracker {
				x := newTracker(t, cfg)
				if err := x.Load(k, buf); err != nil {
					t.Fatal(err)
				}
				return x
			}
			at, ok := load().NextExpiry(k)
			if !ok {
				x := load()
				if evs := x.Expire(now.Add(10000 * time.Hour)); len(evs) > 0 || len(x.TakeDirty(nil)) > 0 {
					t.Fatalf("cfg %d iter %d: no expiry, but Expire far ahead changed the stream: %v", ci, iter, evs)
				}
				continue
			}
			before := load()
			if evs := before.Expire(at.Add(-time.Nanosecond)); len(evs) > 0 || len(before.TakeDirty(nil)) > 0 {
				t.Fatalf("cfg %d iter %d: Expire 1ns before NextExpiry %v changed the stream: %v", ci, iter, at, evs)
			}
			after := load()
			evs := after.Expire(at)
			if len(after.TakeDirty(nil)) == 0 {
				t.Fatalf("cfg %d iter %d: Expire at NextExpiry %v changed nothing (events %v)", ci, iter, at, evs)
			}
		}
	}
}
