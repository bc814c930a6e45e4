package dedup

import (
	"slices"
	"time"

	"github.com/rabbitkit/rabbitkit/protocol"
)

// Parked stamps. A message whose handler failed for good is parked (moved to a parking queue)
// and committed, so that it is neither a gap nor handled again when the publisher resends it. An
// operator who has fixed the cause re-drives it: the copy comes back with its stamp unchanged,
// which Classify calls a duplicate. The tracker therefore remembers which committed stamps were
// parked rather than applied (CommitParked); a re-driven copy of one of them is applied once
// (IsParked, then Unpark committed with the handler's effect), and every later copy is a
// duplicate again.

// parked is one stamp committed by CommitParked and not yet unparked.
type parked struct {
	epoch, seq int64
	at         int64 // unix seconds, when it was parked
}

func cmpParked(a parked, epoch, seq int64) int {
	switch {
	case a.epoch != epoch:
		if a.epoch < epoch {
			return -1
		}
		return 1
	case a.seq < seq:
		return -1
	case a.seq > seq:
		return 1
	}
	return 0
}

func (st *stream) findParked(epoch, seq int64) (int, bool) {
	return slices.BinarySearchFunc(st.parked, [2]int64{epoch, seq}, func(p parked, t [2]int64) int {
		return cmpParked(p, t[0], t[1])
	})
}

// CommitParked is Commit for a message that was parked (its handler failed for good) instead of
// applied: s is accounted for, and also remembered as parked, so that a re-driven copy can still
// be applied once. Persist the stream as after Commit. A stamp that is already committed (a
// re-driven copy that failed again) is remembered as parked if it is not already.
//
// At most Config.MaxParked stamps are remembered per stream; past it, the one parked longest ago
// is forgotten, with EventParkedForgotten among the returned events.
func (t *Tracker) CommitParked(s protocol.Stamp, bodyHash uint64, now time.Time) (bool, []Event) {
	changed, evs := t.Commit(s, bodyHash, now)
	if t.Classify(s).Kind != KindDuplicate {
		return changed, evs // suspicious or stale: Commit ignored it, it was never accounted for
	}
	st := t.lookup(KeyOf(s))
	i, found := st.findParked(s.Epoch, s.Seq)
	if found {
		return changed, evs
	}
	st.parked = slices.Insert(st.parked, i, parked{epoch: s.Epoch, seq: s.Seq, at: now.Unix()})
	if len(st.parked) > t.cfg.MaxParked {
		old := 0
		for j, p := range st.parked {
			if p.at < st.parked[old].at {
				old = j
			}
		}
		p := st.parked[old]
		st.parked = slices.Delete(st.parked, old, old+1)
		evs = append(evs, Event{Kind: EventParkedForgotten, Key: st.key, Epoch: p.epoch, From: p.seq, To: p.seq})
	}
	t.markDirty(st)
	return true, evs
}

// IsParked reports whether s was committed by CommitParked and not unparked since: a re-driven
// copy of it is to be handled (then Unpark, in the same transaction as the handler's effect).
func (t *Tracker) IsParked(s protocol.Stamp) bool {
	st := t.lookup(KeyOf(s))
	if st == nil {
		return false
	}
	_, found := st.findParked(s.Epoch, s.Seq)
	return found
}

// Unpark forgets that s was parked, once a re-driven copy of it has been applied, and reports
// whether it was; it forgets s's start count too. Persist the stream as after Commit. Later
// copies of s are duplicates.
func (t *Tracker) Unpark(s protocol.Stamp) bool {
	st := t.lookup(KeyOf(s))
	if st == nil {
		return false
	}
	i, found := st.findParked(s.Epoch, s.Seq)
	if !found {
		return false
	}
	st.parked = slices.Delete(st.parked, i, i+1)
	t.markDirty(st)
	t.clearStarts(s)
	return true
}

// ParkedInfo is one stamp parked and not yet re-applied.
type ParkedInfo struct {
	Epoch, Seq int64
	At         time.Time // when it was parked, to the second
}

// Parked returns k's parked stamps in (epoch, seq) order, or nil.
func (t *Tracker) Parked(k Key) []ParkedInfo {
	st := t.streams[k]
	if st == nil || len(st.parked) == 0 {
		return nil
	}
	out := make([]ParkedInfo, len(st.parked))
	for i, p := range st.parked {
		out[i] = ParkedInfo{Epoch: p.epoch, Seq: p.seq, At: time.Unix(p.at, 0)}
	}
	return out
}

// RetiredInfo is one retired epoch of a stream: its stragglers are KindStaleEpoch.
type RetiredInfo struct {
	Epoch int64
	At    time.Time // when it was retired
}

// Retired returns k's retired epochs, oldest first, or nil.
func (t *Tracker) Retired(k Key) []RetiredInfo {
	st := t.streams[k]
	if st == nil || len(st.retired) == 0 {
		return nil
	}
	out := make([]RetiredInfo, len(st.retired))
	for i, r := range st.retired {
		out[i] = RetiredInfo{Epoch: r.epoch, At: time.Unix(0, r.at)}
	}
	return out
}

// Handler start counts. A message whose handler kills the consumer process (a panic outside the
// handler's recover, os.Exit, the OOM killer) is redelivered forever: no attempt ever fails, the
// process just dies. The consumer therefore records, durably and before it runs the handler of a
// redelivered message, that the handler is being started (Start); Commit, when the message is
// handled or parked, forgets the count. A count that keeps rising is a message that crashes the
// process each time: the consumer parks it past a bound.

// started is the start count of one stamp not committed yet.
type started struct {
	epoch, seq int64
	n          int64
}

// maxStarts bounds the start counts kept per stream: past it the lowest stamp's is forgotten.
const maxStarts = 1024

func cmpStamp(epoch, seq, e2, s2 int64) int {
	switch {
	case epoch != e2:
		if epoch < e2 {
			return -1
		}
		return 1
	case seq < s2:
		return -1
	case seq > s2:
		return 1
	}
	return 0
}

func (st *stream) findStarts(epoch, seq int64) (int, bool) {
	return slices.BinarySearchFunc(st.starts, [2]int64{epoch, seq}, func(c started, t [2]int64) int {
		return cmpStamp(c.epoch, c.seq, t[0], t[1])
	})
}

// Starts returns how many times Start was called for s since s was last committed (or since
// ever), as persisted.
func (t *Tracker) Starts(s protocol.Stamp) int64 {
	st := t.lookup(KeyOf(s))
	if st == nil {
		return 0
	}
	if i, ok := st.findStarts(s.Epoch, s.Seq); ok {
		return st.starts[i].n
	}
	return 0
}

// Start records that the handler of s is about to run and returns the count, this start
// included. Persist the stream (TakeDirty, AppendState) before running the handler: a count
// that survives crashes is the point. s must be new (Classify says KindNew) or parked (a
// re-driven copy is about to run): any other stamp is not counted (0). A stream without state
// gets one, with nothing committed and now as its last activity (so that idle retention and
// ForgetAfter count from the start, not from 1970): its first Commit then proceeds as for a new
// stream.
func (t *Tracker) Start(s protocol.Stamp, now time.Time) int64 {
	if t.Classify(s).Kind != KindNew && !t.IsParked(s) {
		return 0
	}
	key := KeyOf(s)
	st := t.lookup(key)
	if st == nil {
		st = &stream{key: key, wins: []*window{{epoch: s.Epoch, active: now.UnixNano()}}}
		if t.cfg.AdoptStreams && s.Seq > 1 {
			// As Commit would adopt it: the numbers below are not waited for.
			p := s.Seq - 1
			x := st.wins[0]
			x.w, x.h, x.floor = p, p, p
			x.lost = []span{{1, p}}
		}
		t.streams[key] = st
		if _, ok := t.forgotten[key]; ok {
			delete(t.forgotten, key)
			st.dirty = true // the key is still listed in t.dirty
		}
	}
	i, found := st.findStarts(s.Epoch, s.Seq)
	if found {
		st.starts[i].n++
	} else {
		st.starts = slices.Insert(st.starts, i, started{epoch: s.Epoch, seq: s.Seq, n: 1})
		if len(st.starts) > maxStarts {
			st.starts = slices.Delete(st.starts, 0, 1)
			if i == 0 {
				return 1
			}
			i--
		}
	}
	t.markDirty(st)
	return st.starts[i].n
}

// clearStarts forgets s's start count (Commit: its handler finished, or it was parked).
func (t *Tracker) clearStarts(s protocol.Stamp) {
	st := t.lookup(KeyOf(s))
	if st == nil || len(st.starts) == 0 {
		return
	}
	if i, ok := st.findStarts(s.Epoch, s.Seq); ok {
		st.starts = slices.Delete(st.starts, i, i+1)
		t.markDirty(st)
	}
}
