package dedup

import (
	"slices"
	"time"
)

// maxScanInterval bounds how often Expire walks every stream looking for idle ones.
const maxScanInterval = time.Minute

// Expire does the time-driven work and returns what must be reported:
//   - gaps open for Config.GapGrace are reported once (EventGapDetected);
//   - epochs other than a stream's most recently active one, without a commit for
//     Config.EpochRetention, are retired (EventGapGivenUp for their open gaps, EventEpochRetired);
//   - streams without a commit for Config.IdleRetention are compacted (EventGapGivenUp,
//     EventEpochRetired), and deleted after Config.ForgetAfter (EventStreamForgotten).
//
// Changed streams are reported by TakeDirty. Call it periodically, e.g. every second; a call costs
// O(streams with open gaps or several epochs), plus a walk over all streams at most once a minute
// (or every IdleRetention/4 when that is shorter).
func (t *Tracker) Expire(now time.Time) []Event {
	nowN := now.UnixNano()
	grace := int64(t.cfg.GapGrace)
	var evs []Event
	for st := range t.watch {
		changed := false
		for _, x := range st.wins {
			var ch bool
			evs, ch = x.reportDue(st.key, nowN, grace, evs)
			changed = changed || ch
		}
		for i := len(st.wins) - 1; i >= 1; i-- {
			if nowN-st.wins[i].active >= int64(t.cfg.EpochRetention) {
				evs = t.retire(st, i, nowN, evs)
				changed = true
			}
		}
		if changed {
			t.markDirty(st)
			t.updateWatch(st)
		}
	}
	if nowN >= t.nextScan {
		t.nextScan = nowN + int64(min(maxScanInterval, t.cfg.IdleRetention/4))
		evs = t.scanIdle(nowN, evs)
	}
	return evs
}

// scanIdle compacts or forgets idle streams.
func (t *Tracker) scanIdle(now int64, evs []Event) []Event {
	for k, st := range t.streams {
		idle := now - st.wins[0].active
		if t.cfg.ForgetAfter > 0 && idle >= int64(t.cfg.ForgetAfter) {
			t.remove(k, st)
			if !st.dirty {
				t.dirty = append(t.dirty, k)
			}
			t.forgotten[k] = struct{}{}
			evs = append(evs, Event{Kind: EventStreamForgotten, Key: k, Epoch: st.wins[0].epoch})
			continue
		}
		if st.compact || idle < int64(t.cfg.IdleRetention) {
			continue
		}
		st.compact = true
		x := st.wins[0]
		x.hashes, x.hashPos = nil, 0
		if len(st.wins) == 1 && len(x.missing) == 0 {
			continue // nothing durable to compact (e.g. after a restart)
		}
		for i := len(st.wins) - 1; i >= 1; i-- {
			evs = t.retire(st, i, now, evs)
		}
		evs = x.giveUpAll(k, &t.cfg, evs)
		x.missing = slices.Clip(x.missing)
		t.markDirty(st)
		t.updateWatch(st)
	}
	return evs
}

// NextExpiry returns the earliest time at which Expire would change k's state or report something
// about it: an unreported gap reaching Config.GapGrace, an epoch other than the most recently
// active one reaching Config.EpochRetention, the stream reaching Config.IdleRetention while it has
// anything to compact (open gaps or several epochs), or Config.ForgetAfter when set. It returns
// false when k is unknown or nothing about it is time-driven (one epoch, no gaps, ForgetAfter
// zero). A store that keeps streams outside the tracker (a database row per stream) stores this
// time beside the state, so that it loads only the streams due for Expire.
//
// It is exact for a tracker that has just loaded k: Expire(now) with now before the returned time
// changes nothing of k, and Expire(now) at or after it does, unless the idle scan is not due yet
// (Expire walks idle streams at most once a minute; a tracker that never ran Expire runs the walk
// on its first call).
func (t *Tracker) NextExpiry(k Key) (time.Time, bool) {
	st := t.streams[k]
	if st == nil {
		return time.Time{}, false
	}
	var next int64
	have := false
	take := func(at int64) {
		if !have || at < next {
			next, have = at, true
		}
	}
	anyGap := false
	for i, x := range st.wins {
		if len(x.missing) > 0 {
			anyGap = true
		}
		if x.unreported > 0 {
			for _, g := range x.missing {
				if !g.reported {
					take(g.since + int64(t.cfg.GapGrace))
				}
			}
		}
		if i > 0 {
			take(x.active + int64(t.cfg.EpochRetention))
		}
	}
	active := st.wins[0].active
	if anyGap || len(st.wins) > 1 {
		take(active + int64(t.cfg.IdleRetention))
	}
	if t.cfg.ForgetAfter > 0 {
		take(active + int64(t.cfg.ForgetAfter))
	}
	if !have {
		return time.Time{}, false
	}
	return time.Unix(0, next), true
}
