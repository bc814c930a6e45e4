package dedup

import (
	"testing"
	"time"

	"github.com/rabbitkit/rabbitkit/protocol"
)

var t0 = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

func st(epoch, seq int64) protocol.Stamp {
	return protocol.Stamp{Source: "src", Epoch: epoch, Stream: "s", Seq: seq}
}

func newTracker(t testing.TB, cfg Config) *Tracker {
	t.Helper()
	tr, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return tr
}

// step is one action of a table test: commit (and expect the verdict before it), or expire.
type step struct {
	expire bool
	at     time.Duration // since t0
	epoch  int64
	seq    int64
	want   Kind
	flags  Flags
	events []EventKind
}

func TestTrackerTable(t *testing.T) {
	cfg := Config{GapGrace: time.Second, MaxAhead: 100, MaxSeen: 5, EpochRetention: time.Minute}
	tests := []struct {
		name  string
		steps []step
	}{
		{"in order then duplicate", []step{
			{epoch: 1, seq: 1, want: KindNew, flags: FlagNewStream},
			{epoch: 1, seq: 2, want: KindNew},
			{epoch: 1, seq: 1, want: KindDuplicate},
			{epoch: 1, seq: 2, want: KindDuplicate},
		}},
		{"reorder fills gap silently", []step{
			{epoch: 1, seq: 1, want: KindNew, flags: FlagNewStream},
			{epoch: 1, seq: 3, want: KindNew},
			{epoch: 1, seq: 3, want: KindDuplicate},
			{epoch: 1, seq: 2, want: KindNew},
			{expire: true, at: time.Hour},
			{epoch: 1, seq: 2, want: KindDuplicate},
		}},
		{"gap reported once then late", []step{
			{epoch: 1, seq: 1, want: KindNew, flags: FlagNewStream},
			{epoch: 1, seq: 4, want: KindNew},
			{expire: true, at: 500 * time.Millisecond},
			{expire: true, at: time.Second, events: []EventKind{EventGapDetected}},
			{expire: true, at: 2 * time.Second},
			{epoch: 1, seq: 3, want: KindNew, flags: FlagLate, events: []EventKind{EventLateArrival}},
			{epoch: 1, seq: 3, want: KindDuplicate},
			{epoch: 1, seq: 2, want: KindNew, flags: FlagLate, events: []EventKind{EventLateArrival}},
		}},
		{"absurd jump is suspicious and harmless", []step{
			{epoch: 1, seq: 1, want: KindNew, flags: FlagNewStream},
			{epoch: 1, seq: 1 << 62, want: KindSuspicious},
			{epoch: 1, seq: 102, want: KindSuspicious},
			{epoch: 1, seq: 101, want: KindNew},
			{epoch: 1, seq: 2, want: KindNew},
			{epoch: 1, seq: 1 << 62, want: KindSuspicious},
		}},
		{"max ahead counts from W, not from the highest seen", []step{
			{epoch: 1, seq: 1, want: KindNew, flags: FlagNewStream},
			{epoch: 1, seq: 100, want: KindNew},
			{epoch: 1, seq: 102, want: KindSuspicious},
			{epoch: 1, seq: 101, want: KindNew},
			{epoch: 1, seq: 2, want: KindNew},
			{epoch: 1, seq: 102, want: KindNew},
		}},
		{"retention boundary", []step{
			{epoch: 1, seq: 1, want: KindNew, flags: FlagNewStream},
			{epoch: 2, seq: 1, want: KindNew, flags: FlagNewEpoch, events: []EventKind{EventEpochChanged}},
			{expire: true, at: time.Minute - 1},
			{expire: true, at: time.Minute, events: []EventKind{EventEpochRetired}},
			{epoch: 1, seq: 2, want: KindStaleEpoch},
		}},
		{"first message beyond MaxAhead", []step{
			{epoch: 1, seq: 101, want: KindSuspicious, flags: FlagNewStream},
			{epoch: 1, seq: 1, want: KindNew, flags: FlagNewStream},
		}},
		{"max seen gives up oldest gap", []step{
			{epoch: 1, seq: 1, want: KindNew, flags: FlagNewStream},
			{epoch: 1, seq: 3, want: KindNew},
			{epoch: 1, seq: 4, want: KindNew},
			{epoch: 1, seq: 5, want: KindNew},
			{epoch: 1, seq: 7, want: KindNew},
			{epoch: 1, seq: 8, want: KindNew},
			{epoch: 1, seq: 9, want: KindNew, events: []EventKind{EventGapGivenUp}},
			{epoch: 1, seq: 2, want: KindNew, flags: FlagLate, events: []EventKind{EventLateArrival}},
			{epoch: 1, seq: 6, want: KindNew},
			{epoch: 1, seq: 5, want: KindDuplicate},
		}},
		{"epoch change and stragglers", []step{
			{epoch: 1, seq: 1, want: KindNew, flags: FlagNewStream},
			{epoch: 1, seq: 2, want: KindNew},
			{epoch: 9, seq: 1, want: KindNew, flags: FlagNewEpoch, events: []EventKind{EventEpochChanged}},
			{epoch: 1, seq: 2, want: KindDuplicate, flags: FlagOldEpoch},
			{epoch: 1, seq: 3, want: KindNew, flags: FlagOldEpoch},
			{epoch: 9, seq: 2, want: KindNew, flags: FlagOldEpoch}, // epoch 1 was the most recently active
			{expire: true, at: 2 * time.Minute, events: []EventKind{EventEpochRetired}},
			{epoch: 1, seq: 4, want: KindStaleEpoch},
			{epoch: 1, seq: 1, want: KindStaleEpoch},
			{epoch: 9, seq: 2, want: KindDuplicate},
		}},
		{"invalid stamps", []step{
			{epoch: 0, seq: 1, want: KindSuspicious},
			{epoch: 1, seq: 0, want: KindSuspicious},
			{epoch: 1, seq: -5, want: KindSuspicious},
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tr := newTracker(t, cfg)
			now := t0
			for i, s := range tc.steps {
				if s.expire {
					now = t0.Add(s.at)
					checkEvents(t, i, tr.Expire(now), s.events)
					continue
				}
				v := tr.Classify(st(s.epoch, s.seq))
				if v.Kind != s.want || v.Flags != s.flags {
					t.Fatalf("step %d: Classify(%d/%d) = %v, want %v flags %b", i, s.epoch, s.seq, v, s.want, s.flags)
				}
				ok, evs := tr.Commit(st(s.epoch, s.seq), 0, now)
				if ok != (s.want == KindNew) {
					t.Fatalf("step %d: Commit = %v for %v", i, ok, v)
				}
				checkEvents(t, i, evs, s.events)
			}
		})
	}
}

func checkEvents(t *testing.T, i int, got []Event, want []EventKind) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("step %d: events %v, want %v", i, got, want)
	}
	for j := range got {
		if got[j].Kind != want[j] {
			t.Fatalf("step %d: events %v, want %v", i, got, want)
		}
	}
}
