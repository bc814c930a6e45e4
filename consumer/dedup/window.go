package dedup

import (
	"slices"
	"time"
)

// gap is a missing range (lo..hi, inclusive) above W, with the time it was first noticed.
type gap struct {
	lo, hi   int64
	since    int64 // unix nanoseconds
	reported bool
}

// span is a given-up range below W.
type span struct{ lo, hi int64 }

type seqHash struct {
	seq  int64
	hash uint64
}

// window is the state of one epoch of one stream.
//
// Invariants (checked by decode and by the tests):
//   - 0 <= w <= h.
//   - (w, h] is partitioned into committed numbers and the missing gaps; gaps are sorted, disjoint,
//     not adjacent, inside (w, h), and when w < h the first gap starts at w+1 (w is the end of the
//     contiguous committed prefix). h is committed (or h == w).
//   - missingN is the total length of the gaps; unreported counts gaps with reported == false.
//   - lost spans are sorted, disjoint, inside [1, w]; 0 <= floor <= w, and a span never straddles
//     floor (the span [1, floor] is the adopted stream's unseen prefix, not a reported loss).
type window struct {
	epoch      int64
	w, h       int64
	missing    []gap
	missingN   int64
	unreported int
	lost       []span
	active     int64 // unix nanoseconds of the last commit
	floor      int64 // numbers <= floor predate the stream's adoption (Config.AdoptStreams): never late
	hashes     []seqHash
	hashPos    int
}

// findGap returns the index of the gap holding seq, or -1.
func (x *window) findGap(seq int64) int {
	if seq <= x.w || seq >= x.h || len(x.missing) == 0 {
		return -1
	}
	i, _ := slices.BinarySearchFunc(x.missing, seq, func(g gap, s int64) int {
		switch {
		case g.hi < s:
			return -1
		case g.lo > s:
			return 1
		}
		return 0
	})
	if i < len(x.missing) && x.missing[i].lo <= seq && seq <= x.missing[i].hi {
		return i
	}
	return -1
}

// findLost returns the index of the lost span holding seq, or -1.
func (x *window) findLost(seq int64) int {
	if len(x.lost) == 0 || seq > x.w {
		return -1
	}
	i, _ := slices.BinarySearchFunc(x.lost, seq, func(s span, q int64) int {
		switch {
		case s.hi < q:
			return -1
		case s.lo > q:
			return 1
		}
		return 0
	})
	if i < len(x.lost) && x.lost[i].lo <= seq && seq <= x.lost[i].hi {
		return i
	}
	return -1
}

// classify decides about seq in this window (the epoch matches).
func (x *window) classify(seq, maxAhead int64) Verdict {
	switch {
	case seq-x.w > maxAhead:
		return Verdict{Kind: KindSuspicious}
	case seq <= x.w:
		if x.findLost(seq) >= 0 {
			if seq <= x.floor {
				return Verdict{Kind: KindNew}
			}
			return Verdict{Kind: KindNew, Flags: FlagLate}
		}
		return Verdict{Kind: KindDuplicate, StoredHash: x.storedHash(seq)}
	case seq > x.h:
		return Verdict{Kind: KindNew}
	}
	if i := x.findGap(seq); i >= 0 {
		if x.missing[i].reported {
			return Verdict{Kind: KindNew, Flags: FlagLate}
		}
		return Verdict{Kind: KindNew}
	}
	return Verdict{Kind: KindDuplicate, StoredHash: x.storedHash(seq)}
}

func (x *window) storedHash(seq int64) uint64 {
	for _, e := range x.hashes {
		if e.seq == seq {
			return e.hash
		}
	}
	return 0
}

func (x *window) recordHash(seq int64, hash uint64, history int) {
	if hash == 0 || history <= 0 {
		return
	}
	if len(x.hashes) < history {
		x.hashes = append(x.hashes, seqHash{seq, hash})
		return
	}
	x.hashPos %= len(x.hashes)
	x.hashes[x.hashPos] = seqHash{seq, hash}
	x.hashPos++
}

// commit marks seq as committed. It reports whether the state changed and appends events.
// The caller has checked that seq-w <= maxAhead.
func (x *window) commit(key Key, seq int64, now int64, cfg *Config, evs []Event) ([]Event, bool) {
	// Fast path: in order, nothing missing.
	if seq == x.h+1 && x.w == x.h {
		x.w, x.h = seq, seq
		return evs, true
	}
	switch {
	case seq <= x.w:
		i := x.findLost(seq)
		if i < 0 {
			return evs, false // duplicate
		}
		x.lost = removeSpan(x.lost, i, seq)
		if seq > x.floor {
			evs = append(evs, Event{Kind: EventLateArrival, Key: key, Epoch: x.epoch, From: seq, To: seq})
		}
		return evs, true
	case seq > x.h:
		if seq > x.h+1 {
			x.missing = append(x.missing, gap{lo: x.h + 1, hi: seq - 1, since: now})
			x.missingN += seq - 1 - x.h
			x.unreported++
		}
		x.h = seq
		if len(x.missing) == 0 {
			x.w = x.h
		}
	default:
		i := x.findGap(seq)
		if i < 0 {
			return evs, false // duplicate
		}
		g := x.missing[i]
		if g.reported {
			evs = append(evs, Event{Kind: EventLateArrival, Key: key, Epoch: x.epoch, From: seq, To: seq})
		}
		x.removeFromGap(i, seq)
		x.advance()
	}
	return x.enforceMaxSeen(key, cfg, evs), true
}

// removeFromGap takes seq out of gap i.
func (x *window) removeFromGap(i int, seq int64) {
	g := &x.missing[i]
	x.missingN--
	switch {
	case g.lo == g.hi:
		if !g.reported {
			x.unreported--
		}
		x.missing = slices.Delete(x.missing, i, i+1)
	case seq == g.lo:
		g.lo++
	case seq == g.hi:
		g.hi--
	default:
		tail := gap{lo: seq + 1, hi: g.hi, since: g.since, reported: g.reported}
		g.hi = seq - 1
		if !tail.reported {
			x.unreported++
		}
		x.missing = slices.Insert(x.missing, i+1, tail)
	}
}

// advance moves w to the end of the contiguous committed prefix.
func (x *window) advance() {
	if len(x.missing) == 0 {
		x.w = x.h
	} else {
		x.w = x.missing[0].lo - 1
	}
}

// enforceMaxSeen gives up the oldest gaps while more than MaxSeen numbers are committed above w.
func (x *window) enforceMaxSeen(key Key, cfg *Config, evs []Event) []Event {
	for len(x.missing) > 0 && x.h-x.w-x.missingN > int64(cfg.MaxSeen) {
		evs = x.giveUpFirst(key, cfg, evs)
	}
	return evs
}

// giveUpFirst moves the first gap into the lost spans and advances w past it.
func (x *window) giveUpFirst(key Key, cfg *Config, evs []Event) []Event {
	g := x.missing[0]
	x.missing = x.missing[1:] // O(1); append reallocates (copying only live gaps) when needed
	x.missingN -= g.hi - g.lo + 1
	if !g.reported {
		x.unreported--
	}
	evs = append(evs, Event{Kind: EventGapGivenUp, Key: key, Epoch: x.epoch, From: g.lo, To: g.hi, Since: time.Unix(0, g.since)})
	if n := len(x.lost); n > 0 && x.lost[n-1].hi+1 == g.lo && x.lost[n-1].hi > x.floor {
		x.lost[n-1].hi = g.hi
	} else {
		x.lost = append(x.lost, span{g.lo, g.hi})
	}
	for len(x.lost) > cfg.MaxLostRanges {
		s := x.lost[0]
		x.lost = x.lost[1:]
		evs = append(evs, Event{Kind: EventLostForgotten, Key: key, Epoch: x.epoch, From: s.lo, To: s.hi})
	}
	x.advance()
	return evs
}

// giveUpAll gives up every open gap (compaction, retirement).
func (x *window) giveUpAll(key Key, cfg *Config, evs []Event) []Event {
	for len(x.missing) > 0 {
		evs = x.giveUpFirst(key, cfg, evs)
	}
	return evs
}

// reportDue marks gaps open for at least grace as reported and appends EventGapDetected for each.
func (x *window) reportDue(key Key, now, grace int64, evs []Event) ([]Event, bool) {
	if x.unreported == 0 {
		return evs, false
	}
	// Gaps are created at the top with the current time and splits keep their time, so with a
	// clock that does not step back the unreported gaps are a suffix: walk back from the end until
	// all of them were seen (correct, if slower, with any clock).
	first := len(evs)
	seen := 0
	for i := len(x.missing) - 1; i >= 0 && seen < x.unreported; i-- {
		g := &x.missing[i]
		if g.reported {
			continue
		}
		seen++
		if now-g.since < grace {
			continue
		}
		g.reported = true
		evs = append(evs, Event{Kind: EventGapDetected, Key: key, Epoch: x.epoch, From: g.lo, To: g.hi, Since: time.Unix(0, g.since)})
	}
	x.unreported -= len(evs) - first
	slices.Reverse(evs[first:]) // oldest gap first
	return evs, len(evs) > first
}

// removeSpan takes seq out of spans[i].
func removeSpan(spans []span, i int, seq int64) []span {
	s := &spans[i]
	switch {
	case s.lo == s.hi:
		return slices.Delete(spans, i, i+1)
	case seq == s.lo:
		s.lo++
	case seq == s.hi:
		s.hi--
	default:
		tail := span{seq + 1, s.hi}
		s.hi = seq - 1
		return slices.Insert(spans, i+1, tail)
	}
	return spans
}
