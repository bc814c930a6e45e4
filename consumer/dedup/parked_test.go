package dedup

import (
	"encoding/binary"
	"errors"
	"hash/crc32"
	"testing"
	"time"

	"github.com/rabbitkit/rabbitkit/protocol"
)

func TestParkedRedriveAppliesOnce(t *testing.T) {
	tr := newTracker(t, Config{})
	st := func(seq int64) protocol.Stamp { return protocol.Stamp{Source: "src", Stream: "s", Epoch: 3, Seq: seq} }
	k := Key{"src", "s"}
	now := t0
	tr.Commit(st(1), 0, now)
	if changed, evs := tr.CommitParked(st(2), 0, now); !changed || len(evs) != 0 {
		t.Fatalf("CommitParked = %v %v", changed, evs)
	}
	tr.Commit(st(3), 0, now)
	if v := tr.Classify(st(2)); v.Kind != KindDuplicate {
		t.Fatalf("parked stamp classifies %v, want duplicate (accounted, not a gap)", v)
	}
	if info, _ := tr.Info(k); info[0].W != 3 {
		t.Fatalf("W = %d, want 3: a parked stamp is not a gap", info[0].W)
	}
	if !tr.IsParked(st(2)) || tr.IsParked(st(1)) || tr.IsParked(st(3)) {
		t.Fatal("IsParked wrong")
	}
	if got := tr.Parked(k); len(got) != 1 || got[0].Seq != 2 || got[0].Epoch != 3 || !got[0].At.Equal(now.Truncate(time.Second)) {
		t.Fatalf("Parked = %+v", got)
	}
	// Parked again (a re-driven copy failed again): still one entry.
	tr.CommitParked(st(2), 0, now)
	if n := len(tr.Parked(k)); n != 1 {
		t.Fatalf("%d parked after parking twice", n)
	}
	// Persisted as version 2, restored with the parked set.
	tr.TakeDirty(nil)
	enc, _ := tr.AppendState(nil, k)
	if enc[0] != stateVersionParked {
		t.Fatalf("version %d with a parked stamp", enc[0])
	}
	tr2 := newTracker(t, Config{})
	if err := tr2.Load(k, enc); err != nil {
		t.Fatal(err)
	}
	if !tr2.IsParked(st(2)) {
		t.Fatal("parked stamp lost by the round trip")
	}
	if !tr2.Unpark(st(2)) || tr2.Unpark(st(2)) || tr2.IsParked(st(2)) {
		t.Fatal("Unpark must succeed exactly once")
	}
	if d := tr2.TakeDirty(nil); len(d) != 1 {
		t.Fatalf("Unpark left the stream clean: %v", d)
	}
	enc, _ = tr2.AppendState(nil, k)
	if enc[0] != stateVersion {
		t.Fatalf("version %d without parked stamps: older releases could not read it", enc[0])
	}
	if tr2.Unpark(protocol.Stamp{Source: "x", Stream: "y", Epoch: 1, Seq: 1}) {
		t.Fatal("Unpark of an unknown stream")
	}
}

func TestParkedIgnoresUnaccounted(t *testing.T) {
	tr := newTracker(t, Config{MaxAhead: 10})
	s := protocol.Stamp{Source: "src", Stream: "s", Epoch: 1, Seq: 50} // suspicious: never accounted
	if changed, _ := tr.CommitParked(s, 0, t0); changed || tr.IsParked(s) {
		t.Fatal("a suspicious stamp must not be remembered as parked")
	}
}

func TestParkedBound(t *testing.T) {
	tr := newTracker(t, Config{MaxParked: 3})
	now := t0
	var evs []Event
	for seq := int64(1); seq <= 5; seq++ {
		now = now.Add(time.Second)
		_, e := tr.CommitParked(protocol.Stamp{Source: "src", Stream: "s", Epoch: 1, Seq: seq}, 0, now)
		evs = append(evs, e...)
	}
	got := tr.Parked(Key{"src", "s"})
	if len(got) != 3 || got[0].Seq != 3 || got[2].Seq != 5 {
		t.Fatalf("Parked = %+v, want 3..5", got)
	}
	if len(evs) != 2 || evs[0].Kind != EventParkedForgotten || evs[0].From != 1 || evs[1].From != 2 {
		t.Fatalf("events %v, want parked-forgotten for 1 and 2", evs)
	}
	if _, err := New(Config{MaxParked: -1}); !errors.Is(err, ErrInvalidConfig) {
		t.Fatalf("MaxParked -1: %v", err)
	}
}

func TestParkedDecodeRejects(t *testing.T) {
	tr := newTracker(t, Config{})
	k := Key{"src", "s"}
	tr.Commit(protocol.Stamp{Source: "src", Stream: "s", Epoch: 1, Seq: 1}, 0, t0)
	v1, _ := tr.AppendState(nil, k)
	body := v1[:len(v1)-4]
	for _, c := range []struct {
		name   string
		parked []byte
	}{
		{"zero count", []byte{0}},
		{"epoch zero", []byte{1, 0, 1, 0}},
		{"seq zero", []byte{1, 1, 0, 0}},
		{"not increasing", []byte{2, 1, 4, 0, 0, 0, 0}},
		{"truncated", []byte{2, 1, 4}},
	} {
		t.Run(c.name, func(t *testing.T) {
			b := append([]byte{stateVersionParked}, body[1:]...)
			b = append(b, c.parked...)
			if err := tr.Load(k, withCRCOf(b)); !errors.Is(err, ErrCorrupt) {
				t.Fatalf("Load = %v, want ErrCorrupt", err)
			}
		})
	}
}

func withCRCOf(body []byte) []byte {
	return binary.LittleEndian.AppendUint32(body, crc32.Checksum(body, castagnoli))
}

func TestStartCounts(t *testing.T) {
	for _, adopt := range []bool{false, true} {
		tr := newTracker(t, Config{AdoptStreams: adopt})
		k := Key{"src", "s"}
		st := func(seq int64) protocol.Stamp { return protocol.Stamp{Source: "src", Stream: "s", Epoch: 2, Seq: seq} }
		if n := tr.Start(st(5), t0); n != 1 {
			t.Fatalf("first Start = %d", n)
		}
		if info, _ := tr.Info(k); !info[0].Active.Equal(t0) {
			t.Fatalf("a stream Start created is active since %v, want %v (idle retention counts from it)", info[0].Active, t0)
		}
		if n := tr.Start(st(5), t0); n != 2 {
			t.Fatalf("second Start = %d", n)
		}
		if v := tr.Classify(st(5)); v.Kind != KindNew {
			t.Fatalf("a started stamp classifies %v: starting is not committing", v)
		}
		// Persisted with the state (version 2), restored by Load.
		tr.TakeDirty(nil)
		enc, ok := tr.AppendState(nil, k)
		if !ok || enc[0] != stateVersionParked {
			t.Fatalf("state %v %x", ok, enc)
		}
		tr2 := newTracker(t, Config{AdoptStreams: adopt})
		if err := tr2.Load(k, enc); err != nil {
			t.Fatal(err)
		}
		if n := tr2.Starts(st(5)); n != 2 {
			t.Fatalf("after Load: %d starts, want 2", n)
		}
		if n := tr2.Start(st(5), t0); n != 3 {
			t.Fatalf("third Start = %d", n)
		}
		// Commit forgets the count; the state is version 1 again.
		if changed, _ := tr2.Commit(st(5), 0, t0); !changed && !adopt {
			t.Fatal("Commit after Start changed nothing")
		}
		if n := tr2.Starts(st(5)); n != 0 {
			t.Fatalf("%d starts after Commit", n)
		}
		if tr2.Start(st(5), t0) != 0 {
			t.Fatal("a committed stamp is not counted")
		}
		enc, _ = tr2.AppendState(nil, k)
		if enc[0] != stateVersion {
			t.Fatalf("version %d without starts or parked stamps", enc[0])
		}
		// CommitParked forgets it too.
		tr2.Start(st(9), t0)
		tr2.CommitParked(st(9), 0, t0)
		if tr2.Starts(st(9)) != 0 || !tr2.IsParked(st(9)) {
			t.Fatal("CommitParked must clear the count and park")
		}
		// A re-driven copy of a parked stamp is counted too (it may crash the process again);
		// Unpark, when it is applied, forgets the count.
		if n := tr2.Start(st(9), t0); n != 1 {
			t.Fatalf("Start of a parked stamp = %d, want 1", n)
		}
		if !tr2.Unpark(st(9)) || tr2.Starts(st(9)) != 0 {
			t.Fatal("Unpark must forget the start count")
		}
		checkInvariants(t, tr2)
	}
}
