package dedup

import (
	"encoding/binary"
	"errors"
	"hash/crc32"
	"testing"
	"time"

	"github.com/rabbitkit/rabbitkit/protocol"
)

func TestConfigValidation(t *testing.T) {
	tests := []struct {
		name string
		cfg  Config
		ok   bool
	}{
		{"zero is defaults", Config{}, true},
		{"negative grace", Config{GapGrace: -1}, false},
		{"negative max ahead", Config{MaxAhead: -1}, false},
		{"max ahead too large", Config{MaxAhead: 1<<62 + 1}, false},
		{"negative max seen", Config{MaxSeen: -1}, false},
		{"negative lost", Config{MaxLostRanges: -1}, false},
		{"negative retention", Config{EpochRetention: -time.Second}, false},
		{"negative idle", Config{IdleRetention: -time.Second}, false},
		{"negative forget", Config{ForgetAfter: -time.Second}, false},
		{"forget below idle", Config{IdleRetention: time.Hour, ForgetAfter: time.Minute}, false},
		{"forget above idle", Config{IdleRetention: time.Hour, ForgetAfter: 2 * time.Hour}, true},
		{"negative epochs", Config{MaxEpochs: -1}, false},
		{"negative retired", Config{MaxRetiredEpochs: -1}, false},
		{"hash history off", Config{HashHistory: -1}, true},
		{"hash history -2", Config{HashHistory: -2}, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := New(tc.cfg)
			if (err == nil) != tc.ok || (err != nil && !errors.Is(err, ErrInvalidConfig)) {
				t.Fatalf("New(%+v) = %v, want ok=%v", tc.cfg, err, tc.ok)
			}
		})
	}
	tr := newTracker(t, Config{HashHistory: -1})
	c := tr.Config()
	if c.GapGrace != DefaultGapGrace || c.MaxAhead != DefaultMaxAhead || c.MaxSeen != DefaultMaxSeen ||
		c.EpochRetention != DefaultEpochRetention || c.IdleRetention != DefaultIdleRetention ||
		c.MaxEpochs != DefaultMaxEpochs || c.MaxRetiredEpochs != DefaultMaxRetiredEpochs ||
		c.MaxLostRanges != DefaultMaxLostRanges || c.HashHistory != 0 || c.ForgetAfter != 0 {
		t.Fatalf("defaults not applied: %+v", c)
	}
}

func kinds(evs []Event) []EventKind {
	var out []EventKind
	for _, e := range evs {
		out = append(out, e.Kind)
	}
	return out
}

func TestIdleCompactionAndForget(t *testing.T) {
	tr := newTracker(t, Config{IdleRetention: time.Hour, ForgetAfter: 2 * time.Hour, GapGrace: time.Minute})
	k := Key{"src", "s"}
	for _, c := range []struct{ epoch, seq int64 }{{1, 1}, {1, 2}, {1, 5}, {2, 1}, {2, 3}} {
		tr.Commit(st(c.epoch, c.seq), 7, t0)
	}
	tr.TakeDirty(nil)
	if evs := tr.Expire(t0.Add(59 * time.Minute)); len(evs) != 2 { // the two gaps, after the grace
		t.Fatalf("before idle: %v", evs)
	}
	evs := tr.Expire(t0.Add(time.Hour))
	// Epoch 1 retired (its gap 3..4 given up first), epoch 2's gap 2..2 given up.
	want := []EventKind{EventGapGivenUp, EventEpochRetired, EventGapGivenUp}
	if got := kinds(evs); len(got) != 3 || got[0] != want[0] || got[1] != want[1] || got[2] != want[2] {
		t.Fatalf("compaction events %v", evs)
	}
	if d := tr.TakeDirty(nil); len(d) != 1 || d[0] != k {
		t.Fatalf("compaction dirty %v", d)
	}
	info, _ := tr.Info(k)
	if len(info) != 1 || info[0].W != 3 || info[0].H != 3 || len(info[0].Missing) != 0 || len(info[0].Lost) != 1 {
		t.Fatalf("compacted state %+v", info)
	}
	for _, c := range []struct {
		epoch, seq int64
		want       Kind
		flags      Flags
	}{{2, 1, KindDuplicate, 0}, {2, 2, KindNew, FlagLate}, {2, 4, KindNew, 0}, {1, 3, KindStaleEpoch, 0}} {
		if v := tr.Classify(st(c.epoch, c.seq)); v.Kind != c.want || v.Flags != c.flags {
			t.Fatalf("after compaction Classify(%d/%d) = %v", c.epoch, c.seq, v)
		}
	}
	if v := tr.Classify(st(2, 3)); v.StoredHash != 0 {
		t.Fatalf("hash history survived compaction: %v", v)
	}
	b, _ := tr.AppendState(nil, k)
	if len(b) > 64 {
		t.Fatalf("compacted state is %d bytes", len(b))
	}
	if evs := tr.Expire(t0.Add(90 * time.Minute)); len(evs) != 0 {
		t.Fatalf("second compaction: %v", evs)
	}
	evs = tr.Expire(t0.Add(2 * time.Hour))
	if len(evs) != 1 || evs[0].Kind != EventStreamForgotten || evs[0].Key != k || evs[0].Epoch != 2 {
		t.Fatalf("forget events %v", evs)
	}
	if d := tr.TakeDirty(nil); len(d) != 1 || d[0] != k {
		t.Fatalf("forget dirty %v", d)
	}
	if _, ok := tr.AppendState(nil, k); ok || tr.Len() != 0 {
		t.Fatal("forgotten stream still has state")
	}
	if v := tr.Classify(st(2, 1)); v.Kind != KindNew || v.Flags != FlagNewStream {
		t.Fatalf("after forget: %v", v)
	}
}

func TestMaxEpochsRetiresLeastRecentlyActive(t *testing.T) {
	tr := newTracker(t, Config{MaxEpochs: 2, MaxRetiredEpochs: 2})
	tr.Commit(st(10, 1), 0, t0)
	tr.Commit(st(20, 1), 0, t0)
	tr.Commit(st(10, 2), 0, t0) // 10 is the most recently active again
	_, evs := tr.Commit(st(30, 1), 0, t0)
	if got := kinds(evs); len(got) != 2 || got[0] != EventEpochChanged || got[1] != EventEpochRetired ||
		evs[0].OldEpoch != 10 || evs[1].Epoch != 20 {
		t.Fatalf("events %v", evs)
	}
	if v := tr.Classify(st(20, 2)); v.Kind != KindStaleEpoch {
		t.Fatalf("retired epoch: %v", v)
	}
	if v := tr.Classify(st(10, 2)); v.Kind != KindDuplicate || v.Flags != FlagOldEpoch {
		t.Fatalf("kept epoch: %v", v)
	}
	// Retired numbers are bounded: after two more retirements 20 is forgotten and looks new.
	tr.Commit(st(40, 1), 0, t0) // retires 10
	tr.Commit(st(50, 1), 0, t0) // retires 30, forgets 20
	if v := tr.Classify(st(20, 2)); v.Kind != KindNew || v.Flags != FlagNewEpoch {
		t.Fatalf("forgotten retired epoch: %v", v)
	}
	if v := tr.Classify(st(30, 1)); v.Kind != KindStaleEpoch {
		t.Fatalf("retired epoch 30: %v", v)
	}
}

func TestLostForgotten(t *testing.T) {
	tr := newTracker(t, Config{MaxSeen: 1, MaxLostRanges: 1})
	tr.Commit(st(1, 2), 0, t0)
	_, evs := tr.Commit(st(1, 3), 0, t0) // 1 given up
	if len(evs) != 1 || evs[0].Kind != EventGapGivenUp || evs[0].From != 1 || evs[0].To != 1 {
		t.Fatalf("give up: %v", evs)
	}
	tr.Commit(st(1, 5), 0, t0)
	_, evs = tr.Commit(st(1, 6), 0, t0) // 4 given up, 1 forgotten
	if got := kinds(evs); len(got) != 2 || got[0] != EventGapGivenUp || got[1] != EventLostForgotten || evs[1].From != 1 {
		t.Fatalf("forget: %v", evs)
	}
	if v := tr.Classify(st(1, 1)); v.Kind != KindDuplicate {
		t.Fatalf("forgotten lost number: %v", v)
	}
	if v := tr.Classify(st(1, 4)); v.Kind != KindNew || v.Flags != FlagLate {
		t.Fatalf("remembered lost number: %v", v)
	}
}

func TestSuspiciousNeverPoisons(t *testing.T) {
	tr := newTracker(t, Config{MaxAhead: 1000, GapGrace: time.Second})
	tr.Commit(st(1, 1), 0, t0)
	for _, seq := range []int64{1 << 62, 1<<63 - 1, 1002} {
		if v := tr.Classify(st(1, seq)); v.Kind != KindSuspicious {
			t.Fatalf("Classify(%d) = %v", seq, v)
		}
		if ok, evs := tr.Commit(st(1, seq), 0, t0); ok || evs != nil {
			t.Fatalf("Commit(%d) = %v %v", seq, ok, evs)
		}
	}
	if d := tr.TakeDirty(nil); len(d) != 1 { // only the first real commit
		t.Fatalf("dirty %v", d)
	}
	for seq := int64(2); seq <= 2000; seq++ {
		if v := tr.Classify(st(1, seq)); v.Kind != KindNew || v.Flags != 0 {
			t.Fatalf("real %d after absurd jumps: %v", seq, v)
		}
		if _, evs := tr.Commit(st(1, seq), 0, t0); evs != nil {
			t.Fatalf("real %d: events %v", seq, evs)
		}
	}
	if evs := tr.Expire(t0.Add(time.Hour)); len(evs) != 0 {
		t.Fatalf("gaps after absurd jumps: %v", evs)
	}
}

func TestClassifyDoesNotMutate(t *testing.T) {
	tr := newTracker(t, Config{})
	tr.Commit(st(1, 1), 0, t0)
	tr.Commit(st(1, 3), 0, t0)
	tr.TakeDirty(nil)
	before, _ := tr.AppendState(nil, Key{"src", "s"})
	for _, s := range []protocol.Stamp{st(1, 2), st(1, 9), st(2, 1), st(1, 1<<62), {Source: "x", Stream: "y", Epoch: 1, Seq: 1}} {
		tr.Classify(s)
	}
	after, _ := tr.AppendState(nil, Key{"src", "s"})
	if string(before) != string(after) || len(tr.TakeDirty(nil)) != 0 || tr.Len() != 1 {
		t.Fatal("Classify changed state")
	}
}

func TestRollbackAfterFailedPersist(t *testing.T) {
	tr := newTracker(t, Config{})
	store := map[Key][]byte{}
	persist := func() []Key {
		keys := tr.TakeDirty(nil)
		for _, k := range keys {
			b, _ := tr.AppendState(nil, k)
			store[k] = b
		}
		return keys
	}
	a := protocol.Stamp{Source: "a", Stream: "s", Epoch: 1, Seq: 1}
	tr.Commit(a, 0, t0)
	persist()
	// A batch touches a stored stream and a new one; its transaction fails.
	a2, b := a, protocol.Stamp{Source: "b", Stream: "s", Epoch: 1, Seq: 1}
	a2.Seq = 2
	tr.Commit(a2, 0, t0)
	tr.Commit(b, 0, t0)
	for _, k := range tr.TakeDirty(nil) {
		if old, ok := store[k]; ok {
			if err := tr.Load(k, old); err != nil {
				t.Fatal(err)
			}
		} else {
			tr.Drop(k)
		}
	}
	if v := tr.Classify(a2); v.Kind != KindNew {
		t.Fatalf("rolled back %v: %v", a2, v)
	}
	if v := tr.Classify(b); v.Kind != KindNew || v.Flags != FlagNewStream {
		t.Fatalf("dropped %v: %v", b, v)
	}
	if v := tr.Classify(a); v.Kind != KindDuplicate {
		t.Fatalf("stored %v: %v", a, v)
	}
	if d := tr.TakeDirty(nil); len(d) != 0 {
		t.Fatalf("dirty after rollback: %v", d)
	}
}

func TestBodyHashHistory(t *testing.T) {
	tr := newTracker(t, Config{HashHistory: 3})
	for seq := int64(1); seq <= 5; seq++ {
		tr.Commit(st(1, seq), BodyHash([]byte{byte(seq)}), t0)
	}
	for seq := int64(1); seq <= 5; seq++ {
		v := tr.Classify(st(1, seq))
		want := uint64(0)
		if seq >= 3 {
			want = BodyHash([]byte{byte(seq)})
		}
		if v.Kind != KindDuplicate || v.StoredHash != want {
			t.Fatalf("seq %d: %v hash %x, want %x", seq, v, v.StoredHash, want)
		}
	}
	if BodyHash([]byte("a")) == BodyHash([]byte("b")) || BodyHash(nil) == 0 {
		t.Fatal("BodyHash")
	}
	off := newTracker(t, Config{HashHistory: -1})
	off.Commit(st(1, 1), 42, t0)
	if v := off.Classify(st(1, 1)); v.StoredHash != 0 {
		t.Fatal("history kept while disabled")
	}
}

func TestGapSinceSurvivesRestart(t *testing.T) {
	tr := newTracker(t, Config{GapGrace: 10 * time.Second})
	k := Key{"src", "s"}
	tr.Commit(st(1, 1), 0, t0)
	tr.Commit(st(1, 3), 0, t0)
	b, _ := tr.AppendState(nil, k)
	tr2 := newTracker(t, Config{GapGrace: 10 * time.Second})
	if err := tr2.Load(k, b); err != nil {
		t.Fatal(err)
	}
	if evs := tr2.Expire(t0.Add(9 * time.Second)); len(evs) != 0 {
		t.Fatalf("early: %v", evs)
	}
	evs := tr2.Expire(t0.Add(10 * time.Second))
	if len(evs) != 1 || evs[0].Kind != EventGapDetected || evs[0].From != 2 || evs[0].To != 2 || !evs[0].Since.Equal(t0) {
		t.Fatalf("gap after restart: %v", evs)
	}
}

func TestKeyEncoding(t *testing.T) {
	keys := []Key{{"a", "bc"}, {"ab", "c"}, {"", ""}, {"src", ""}, {"", "s"}, {"ünï", "x/y%2F"}}
	seen := map[string]Key{}
	for _, k := range keys {
		b := AppendKey(nil, k)
		if o, dup := seen[string(b)]; dup {
			t.Fatalf("%v and %v encode alike", k, o)
		}
		seen[string(b)] = k
		got, err := ParseKey(b)
		if err != nil || got != k {
			t.Fatalf("ParseKey(AppendKey(%v)) = %v, %v", k, got, err)
		}
	}
	for _, b := range [][]byte{nil, {5, 'a'}, {0xff}} {
		if _, err := ParseKey(b); !errors.Is(err, ErrCorrupt) {
			t.Fatalf("ParseKey(%v) = %v", b, err)
		}
	}
}

func TestLoadRejects(t *testing.T) {
	withCRC := func(body ...byte) []byte {
		return binary.LittleEndian.AppendUint32(body, crc32.Checksum(body, castagnoli))
	}
	epoch1 := []byte{1, 0, 0, 0, 0, 0, 0, 0}
	win := func(w, hw byte, tail ...byte) []byte { // epoch 1, W, H-W, active 0, then tail
		b := append([]byte{}, epoch1...)
		return append(append(b, w, hw, 0, w), tail...) // floor 0
	}
	cat := func(parts ...[]byte) []byte {
		var out []byte
		for _, p := range parts {
			out = append(out, p...)
		}
		return out
	}
	good := withCRC(cat([]byte{1, 1}, win(5, 3, 1, 1, 1, 0, 0, 0), []byte{0})...)
	tests := []struct {
		name string
		data []byte
		want error
	}{
		{"empty", nil, ErrCorrupt},
		{"short", []byte{1, 0, 0}, ErrCorrupt},
		{"newer version", withCRC(3, 0), ErrVersion},
		{"version zero", withCRC(0, 0), ErrCorrupt},
		{"bad checksum", append(good[:len(good)-1:len(good)-1], good[len(good)-1]^1), ErrCorrupt},
		{"no epochs", withCRC(1, 0, 0), ErrCorrupt},
		{"epoch zero", withCRC(cat([]byte{1, 1}, make([]byte, 8), []byte{0, 0, 0, 0, 0, 0})...), ErrCorrupt},
		{"repeated epoch", withCRC(cat([]byte{1, 2}, win(0, 0, 0, 0), win(0, 0, 0, 0), []byte{0})...), ErrCorrupt},
		{"H above W without gap", withCRC(cat([]byte{1, 1}, win(5, 3, 0, 0), []byte{0})...), ErrCorrupt},
		{"first gap not at W+1", withCRC(cat([]byte{1, 1}, win(5, 3, 1, 2, 0, 0, 0, 0), []byte{0})...), ErrCorrupt},
		{"gap reaching H", withCRC(cat([]byte{1, 1}, win(5, 3, 1, 1, 2, 0, 0, 0), []byte{0})...), ErrCorrupt},
		{"bad gap flag", withCRC(cat([]byte{1, 1}, win(5, 3, 1, 1, 1, 0, 7, 0), []byte{0})...), ErrCorrupt},
		{"lost above W", withCRC(cat([]byte{1, 1}, win(5, 0, 0, 1, 5, 1), []byte{0})...), ErrCorrupt},
		{"lost at zero", withCRC(cat([]byte{1, 1}, win(5, 0, 0, 1, 0, 0), []byte{0})...), ErrCorrupt},
		{"huge count", withCRC(1, 0xff, 0xff, 0xff, 0xff, 0x0f), ErrCorrupt},
		{"overflowing H", withCRC(cat([]byte{1, 1}, epoch1, []byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f, 1, 0, 0, 0, 0})...), ErrCorrupt},
		{"trailing bytes", withCRC(cat([]byte{1, 1}, win(5, 0, 0, 0), []byte{0, 9})...), ErrCorrupt},
		{"retired epoch repeated", withCRC(cat([]byte{1, 1}, win(5, 0, 0, 0), []byte{1}, epoch1, []byte{0})...), ErrCorrupt},
		{"good", good, nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tr := newTracker(t, Config{})
			err := tr.Load(Key{"src", "s"}, tc.data)
			if tc.want == nil {
				if err != nil {
					t.Fatal(err)
				}
				info, _ := tr.Info(Key{"src", "s"})
				if info[0].W != 5 || info[0].H != 8 || len(info[0].Missing) != 1 || info[0].Missing[0] != (Range{6, 7}) {
					t.Fatalf("decoded %+v", info)
				}
				return
			}
			if !errors.Is(err, tc.want) || tr.Len() != 0 {
				t.Fatalf("Load = %v (len %d), want %v", err, tr.Len(), tc.want)
			}
		})
	}
}

func TestAdoptStreams(t *testing.T) {
	strict := newTracker(t, Config{})
	if v := strict.Classify(st(1, 5_000_000)); v.Kind != KindSuspicious {
		t.Fatalf("strict: %v", v)
	}
	tr := newTracker(t, Config{AdoptStreams: true, GapGrace: time.Second})
	steps := []struct {
		epoch, seq int64
		want       Kind
		flags      Flags
		events     int
	}{
		{1, 5_000_000, KindNew, FlagNewStream, 0},
		{1, 4_999_998, KindNew, 0, 0}, // older than the adoption: handled once, not late
		{1, 4_999_998, KindDuplicate, 0, 0},
		{1, 5_000_002, KindNew, 0, 0},
		{1, 1, KindNew, 0, 0},
		{1, 1 << 62, KindSuspicious, 0, 0},
		{2, 3, KindNew, FlagNewEpoch, 1}, // a new epoch starts at 1: 1..2 is a gap
	}
	for i, s := range steps {
		v := tr.Classify(st(s.epoch, s.seq))
		if v.Kind != s.want || v.Flags != s.flags {
			t.Fatalf("step %d: Classify(%d/%d) = %v", i, s.epoch, s.seq, v)
		}
		if _, evs := tr.Commit(st(s.epoch, s.seq), 0, t0); len(evs) != s.events {
			t.Fatalf("step %d: events %v", i, evs)
		}
	}
	evs := tr.Expire(t0.Add(time.Second))
	if len(evs) != 2 {
		t.Fatalf("gaps %v", evs)
	}
	for _, e := range evs {
		if !(e.Epoch == 1 && e.From == 5_000_001 && e.To == 5_000_001) && !(e.Epoch == 2 && e.From == 1 && e.To == 2) {
			t.Fatalf("unexpected gap %v", e)
		}
	}
	info, _ := tr.Info(Key{"src", "s"})
	if info[1].Floor != 4_999_999 || info[1].W != 5_000_000 || len(info[1].Lost) != 2 {
		t.Fatalf("adopted window %+v", info[1])
	}
	// The floor survives a restart: numbers below it are still not late.
	b, _ := tr.AppendState(nil, Key{"src", "s"})
	tr2 := newTracker(t, Config{AdoptStreams: true})
	if err := tr2.Load(Key{"src", "s"}, b); err != nil {
		t.Fatal(err)
	}
	if v := tr2.Classify(st(1, 4_999_999)); v.Kind != KindNew || v.Flags != FlagOldEpoch {
		t.Fatalf("after restart: %v", v)
	}
}

func TestGapReportWithClockSteppingBack(t *testing.T) {
	tr := newTracker(t, Config{GapGrace: 10 * time.Second})
	tr.Commit(st(1, 1), 0, t0)
	tr.Commit(st(1, 3), 0, t0.Add(20*time.Second)) // gap 2 noticed at 20s
	tr.Commit(st(1, 5), 0, t0.Add(5*time.Second))  // the clock stepped back: gap 4 noticed at 5s
	tr.Commit(st(1, 7), 0, t0.Add(25*time.Second)) // gap 6 noticed at 25s
	evs := tr.Expire(t0.Add(15 * time.Second))
	if len(evs) != 1 || evs[0].From != 4 {
		t.Fatalf("at 15s: %v", evs)
	}
	evs = tr.Expire(t0.Add(35 * time.Second))
	if len(evs) != 2 || evs[0].From != 2 || evs[1].From != 6 {
		t.Fatalf("at 35s: %v", evs)
	}
	if evs := tr.Expire(t0.Add(time.Hour)); len(evs) != 0 {
		t.Fatalf("again: %v", evs)
	}
}
