package dedup

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"slices"
	"testing"
	"time"

	"github.com/rabbitkit/rabbitkit/protocol"
)

// fuzzConfig makes every bound tiny so that fuzz inputs reach them.
var fuzzConfig = Config{
	GapGrace:       time.Second,
	MaxAhead:       30, // below the fuzzed numbers' range (0..39): legit numbers can be suspicious
	MaxSeen:        5,
	MaxLostRanges:  3,
	EpochRetention: 10 * time.Second,
	IdleRetention:  60 * time.Second,
	ForgetAfter:    120 * time.Second,
	MaxEpochs:      2,
	HashHistory:    4,
}

// FuzzWindow drives a tracker from fuzz bytes (deliveries, duplicates, absurd jumps, epochs, time,
// expiry, persistence, restarts, crashes) and checks every answer against the model.
func FuzzWindow(f *testing.F) {
	f.Add([]byte{0, 0, 0, 1, 0, 0, 0, 3, 6, 30, 0, 0, 0, 2})
	f.Add([]byte{0, 0, 0, 1, 0, 0, 1, 1, 0, 0, 0, 2, 6, 250, 6, 250, 0, 0, 0, 2})
	f.Add([]byte{0, 0, 0, 1, 5, 0, 0, 0, 0, 0, 0, 2, 7, 9, 0, 0, 0, 4, 8, 6, 40})
	f.Add([]byte{0, 0, 0, 1, 0, 0, 0, 9, 0, 0, 0, 8, 0, 0, 0, 7, 0, 0, 0, 6, 0, 0, 0, 5, 0, 0, 0, 4, 6, 100})
	f.Add([]byte{0x80, 0, 0, 30, 0, 0, 0, 28, 0, 0, 0, 31, 0, 0, 128, 5, 0, 0, 0, 33, 6, 30, 0, 0, 0, 2})
	f.Add([]byte{0, 1, 0, 1, 0, 1, 2, 1, 0, 1, 1, 1, 6, 200, 6, 200, 0, 1, 0, 2, 6, 255, 6, 255, 6, 255})
	f.Fuzz(func(t *testing.T, data []byte) {
		cfg := fuzzConfig
		if len(data) > 0 && data[0]&0x80 != 0 { // the first byte's top bit picks AdoptStreams
			cfg.AdoptStreams = true
		}
		h := newHarness(t, cfg)
		epochs := [...]int64{101, 1 << 40, 7}
		var redo []protocol.Stamp
		next := func() byte {
			if len(data) == 0 {
				return 0
			}
			b := data[0]
			data = data[1:]
			return b
		}
		for steps := 0; len(data) > 0 && steps < 2000; steps++ {
			if len(redo) > 0 {
				s := redo[0]
				redo = redo[1:]
				h.deliver(s, uint64(s.Seq)|1)
				continue
			}
			switch op := next() % 10; op {
			case 0, 1, 2, 3, 4:
				k := Key{"src", fmt.Sprint("s", op%2)}
				e, seq := next(), int64(next()%40)
				s := protocol.Stamp{Source: k.Source, Stream: k.Stream, Epoch: epochs[int(e)%len(epochs)], Seq: seq}
				if e >= 128 {
					s.Seq += absurdFloor // absurd jump
				}
				h.now += int64(next()%8) * int64(100*time.Millisecond)
				h.deliver(s, uint64(s.Seq)|1) // same stamp, same hash: StoredHash must match
			case 5:
				h.deliver(protocol.Stamp{Source: "src", Stream: "s0", Epoch: 101, Seq: 1 << 62}, 1)
			case 6:
				h.expire(time.Duration(next()) * 100 * time.Millisecond)
			case 7:
				h.persist()
			case 8:
				h.restart()
			case 9:
				redo = append(redo, h.crash()...)
			}
		}
		for _, s := range redo {
			h.deliver(s, uint64(s.Seq)|1)
		}
		h.expire(cfg.GapGrace)
		checkInvariants(t, h.tr)
	})
}

// FuzzDecodeState feeds arbitrary bytes to Load: it must never panic, must reject what it cannot
// use with ErrCorrupt or ErrVersion without changing the tracker, and whatever it accepts must
// satisfy the invariants, survive use, and round-trip through AppendState byte for byte.
func FuzzDecodeState(f *testing.F) {
	for _, b := range sampleStates(f) {
		f.Add(b)
	}
	f.Add([]byte{})
	f.Add([]byte{1, 0, 0, 0, 0})
	f.Add([]byte{2, 1, 2, 3, 4, 5})
	f.Fuzz(func(t *testing.T, data []byte) {
		decodeOne(t, data)
		// Almost every mutation breaks the checksum; to explore the decoder behind it, also try the
		// input with a valid checksum appended.
		if len(data) > 0 {
			decodeOne(t, binary.LittleEndian.AppendUint32(slices.Clip(data), crc32.Checksum(data, castagnoli)))
		}
	})
}

func decodeOne(t *testing.T, data []byte) {
	k := Key{"src", "s"}
	tr := newTracker(t, fuzzConfig)
	if err := tr.Load(k, data); err != nil {
		if !errors.Is(err, ErrCorrupt) && !errors.Is(err, ErrVersion) {
			t.Fatalf("Load: unexpected error %v", err)
		}
		if tr.Len() != 0 {
			t.Fatal("failed Load changed the tracker")
		}
		return
	}
	checkInvariants(t, tr)
	enc, ok := tr.AppendState(nil, k)
	if !ok {
		t.Fatal("loaded stream has no state")
	}
	tr2 := newTracker(t, fuzzConfig)
	if err := tr2.Load(k, enc); err != nil {
		t.Fatalf("re-Load of own encoding: %v", err)
	}
	if enc2, _ := tr2.AppendState(nil, k); string(enc2) != string(enc) {
		t.Fatal("encoding does not round-trip")
	}
	// Use the state: nothing may panic and the invariants must hold afterwards.
	now := t0
	for i, x := range slices.Clone(tr.streams[k].wins) {
		for _, seq := range []int64{1, x.w, x.w + 1, x.h, x.h + 1, x.w + 1000, 1 << 62} {
			s := protocol.Stamp{Source: k.Source, Stream: k.Stream, Epoch: x.epoch, Seq: max(seq, 1)}
			v := tr.Classify(s)
			ok, _ := tr.Commit(s, 0, now.Add(time.Duration(i)*time.Second))
			if ok != (v.Kind == KindNew) {
				t.Fatalf("Commit(%v) = %v after %v", s, ok, v)
			}
		}
	}
	tr.Expire(now.Add(time.Hour))
	checkInvariants(t, tr)
}

// sampleStates returns encodings of real states with gaps, lost ranges, several epochs and
// retired epochs.
func sampleStates(tb testing.TB) [][]byte {
	tr := newTracker(tb, Config{GapGrace: time.Second, MaxSeen: 4, MaxEpochs: 2})
	now := t0
	for _, c := range []struct{ epoch, seq int64 }{
		{5, 1}, {5, 3}, {5, 7}, {5, 8}, {5, 9}, {5, 10}, {5, 11}, {5, 20}, {6, 2}, {6, 1}, {7, 4}, {5, 2}, {7, 9},
	} {
		now = now.Add(700 * time.Millisecond)
		tr.Commit(protocol.Stamp{Source: "src", Stream: "s", Epoch: c.epoch, Seq: c.seq}, 0, now)
		tr.Expire(now)
	}
	var out [][]byte
	b, _ := tr.AppendState(nil, Key{"src", "s"})
	out = append(out, b)
	tr.Commit(protocol.Stamp{Source: "src", Stream: "t", Epoch: 1, Seq: 1}, 0, now)
	b, _ = tr.AppendState(nil, Key{"src", "t"})
	out = append(out, b)
	// Parked stamps (version 2): across epochs, one re-driven already.
	for _, c := range []struct{ epoch, seq int64 }{{5, 21}, {5, 22}, {7, 10}, {7, 12}} {
		now = now.Add(1500 * time.Millisecond)
		tr.CommitParked(protocol.Stamp{Source: "src", Stream: "s", Epoch: c.epoch, Seq: c.seq}, 0, now)
	}
	tr.Unpark(protocol.Stamp{Source: "src", Stream: "s", Epoch: 7, Seq: 10})
	b, _ = tr.AppendState(nil, Key{"src", "s"})
	out = append(out, b)
	// Start counts (version 2): with parked stamps, and alone on a stream Start created.
	for _, seq := range []int64{30, 31, 31, 40} {
		tr.Start(protocol.Stamp{Source: "src", Stream: "s", Epoch: 7, Seq: seq}, now)
	}
	b, _ = tr.AppendState(nil, Key{"src", "s"})
	out = append(out, b)
	tr.Start(protocol.Stamp{Source: "src", Stream: "u", Epoch: 3, Seq: 1}, now)
	b, _ = tr.AppendState(nil, Key{"src", "u"})
	return append(out, b)
}

// checkInvariants verifies the documented invariants of every window.
func checkInvariants(tb testing.TB, tr *Tracker) {
	tb.Helper()
	for k, st := range tr.streams {
		if len(st.wins) == 0 || st.key != k {
			tb.Fatalf("%v: %d windows, key %v", k, len(st.wins), st.key)
		}
		if st.watched != st.needsWatch() {
			tb.Fatalf("%v: watched %v, needs %v", k, st.watched, st.needsWatch())
		}
		if _, in := tr.watch[st]; in != st.watched {
			tb.Fatalf("%v: in watch set %v, flag %v", k, in, st.watched)
		}
		for _, x := range st.wins {
			if err := x.check(); err != nil {
				tb.Fatalf("%v epoch %d: %v", k, x.epoch, err)
			}
		}
	}
}

func (x *window) check() error {
	if x.w < 0 || x.h < x.w {
		return fmt.Errorf("w %d h %d", x.w, x.h)
	}
	if x.w < x.h && (len(x.missing) == 0 || x.missing[0].lo != x.w+1) {
		return fmt.Errorf("w %d < h %d but first gap %v", x.w, x.h, x.missing)
	}
	var n int64
	unrep := 0
	prev := x.w - 1
	for _, g := range x.missing {
		if g.lo <= prev+1 || g.hi < g.lo || g.hi >= x.h {
			return fmt.Errorf("gap %d..%d after %d (h %d)", g.lo, g.hi, prev, x.h)
		}
		n += g.hi - g.lo + 1
		if !g.reported {
			unrep++
		}
		prev = g.hi
	}
	if n != x.missingN || unrep != x.unreported {
		return fmt.Errorf("missingN %d/%d unreported %d/%d", x.missingN, n, x.unreported, unrep)
	}
	if x.floor < 0 || x.floor > x.w {
		return fmt.Errorf("floor %d, w %d", x.floor, x.w)
	}
	prev = 0
	for _, s := range x.lost {
		if s.lo <= x.floor && s.hi > x.floor {
			return fmt.Errorf("lost %d..%d across floor %d", s.lo, s.hi, x.floor)
		}
		if s.lo <= prev || s.hi < s.lo || s.hi > x.w {
			return fmt.Errorf("lost %d..%d after %d (w %d)", s.lo, s.hi, prev, x.w)
		}
		prev = s.hi
	}
	return nil
}
