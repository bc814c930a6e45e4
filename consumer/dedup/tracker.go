package dedup

import (
	"slices"
	"time"

	"github.com/rabbitkit/rabbitkit/protocol"
)

// Tracker holds the dedup window of every stream. It does no I/O, starts no goroutines and never
// reads the clock: times are passed in.
//
// A Tracker is not safe for concurrent use. The consumer serialises every call (it needs Classify,
// Commit and the persistence of the touched streams to be atomic together anyway).
type Tracker struct {
	cfg       Config
	streams   map[Key]*stream
	dirty     []Key            // keys whose stream.dirty was set, or that were forgotten
	forgotten map[Key]struct{} // deleted streams whose deletion is not yet handed out by TakeDirty
	watch     map[*stream]struct{}
	nextScan  int64   // unix nanoseconds of the next idle scan
	last      *stream // the stream of the previous lookup (Classify then Commit hit it); nil after removals
}

// lookup returns k's stream or nil, remembering the last hit.
func (t *Tracker) lookup(k Key) *stream {
	if l := t.last; l != nil && l.key == k {
		return l
	}
	st := t.streams[k]
	if st != nil {
		t.last = st
	}
	return st
}

// remove deletes k's stream from the map and the watch set.
func (t *Tracker) remove(k Key, st *stream) {
	if st.watched {
		delete(t.watch, st)
	}
	delete(t.streams, k)
	t.last = nil
}

// stream is the state of one Key.
type stream struct {
	key     Key
	wins    []*window // wins[0] is the most recently active epoch; len >= 1
	retired []retired // oldest first
	parked  []parked  // parked stamps awaiting a re-drive, in (epoch, seq) order
	starts  []started // handler start counts of stamps not committed yet, in (epoch, seq) order
	dirty   bool      // changed since the last TakeDirty
	watched bool      // in Tracker.watch: has unreported gaps or more than one epoch
	compact bool      // compacted by the idle scan and not committed to since
}

type retired struct {
	epoch int64
	at    int64 // unix nanoseconds
}

// New returns an empty tracker. Zero Config fields take their defaults; out of range fields give
// an error wrapping ErrInvalidConfig.
func New(cfg Config) (*Tracker, error) {
	c, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	return &Tracker{
		cfg:       c,
		streams:   make(map[Key]*stream),
		forgotten: make(map[Key]struct{}),
		watch:     make(map[*stream]struct{}),
	}, nil
}

// Config returns the configuration in effect, defaults filled in.
func (t *Tracker) Config() Config { return t.cfg }

// Len returns the number of streams held.
func (t *Tracker) Len() int { return len(t.streams) }

func (st *stream) find(epoch int64) (int, *window) {
	for i, x := range st.wins {
		if x.epoch == epoch {
			return i, x
		}
	}
	return -1, nil
}

func (st *stream) isRetired(epoch int64) bool {
	for _, r := range st.retired {
		if r.epoch == epoch {
			return true
		}
	}
	return false
}

func valid(s protocol.Stamp) bool {
	return s.Source != "" && s.Stream != "" && s.Epoch >= 1 && s.Seq >= 1
}

// Classify says what to do with a delivered message. It reads committed state only and changes
// nothing, so it may be called any number of times. A message that is being handled but not yet
// committed still classifies as KindNew: the consumer must not run a second copy of the same stamp
// concurrently (keep per-stream order, or re-check with Classify right before Commit, inside the
// same store transaction for transactional handlers).
func (t *Tracker) Classify(s protocol.Stamp) Verdict {
	if !valid(s) {
		return Verdict{Kind: KindSuspicious}
	}
	st := t.lookup(KeyOf(s))
	if st == nil {
		if s.Seq > t.cfg.MaxAhead && !t.cfg.AdoptStreams {
			return Verdict{Kind: KindSuspicious, Flags: FlagNewStream}
		}
		return Verdict{Kind: KindNew, Flags: FlagNewStream}
	}
	i, x := st.find(s.Epoch)
	if x == nil {
		if st.isRetired(s.Epoch) {
			return Verdict{Kind: KindStaleEpoch}
		}
		if s.Seq > t.cfg.MaxAhead {
			return Verdict{Kind: KindSuspicious, Flags: FlagNewEpoch}
		}
		return Verdict{Kind: KindNew, Flags: FlagNewEpoch}
	}
	v := x.classify(s.Seq, t.cfg.MaxAhead)
	if i > 0 {
		v.Flags |= FlagOldEpoch
	}
	return v
}

// Commit records that s was handled successfully or parked: either way it is accounted for and
// not a gap. Call it only after the handler succeeded (or the message was parked with a confirm),
// and persist the touched streams (TakeDirty, AppendState) before acking.
//
// bodyHash is BodyHash of the message body, or 0 to skip the body-hash history.
//
// It reports whether the state changed: false means s was already committed, or is
// KindSuspicious or KindStaleEpoch (ignored: such stamps never move W). Events are returned in the
// order they happened (EventEpochChanged, EventEpochRetired, EventLateArrival, EventGapGivenUp,
// EventLostForgotten); most calls return none and do not allocate.
func (t *Tracker) Commit(s protocol.Stamp, bodyHash uint64, now time.Time) (bool, []Event) {
	if !valid(s) {
		return false, nil
	}
	t.clearStarts(s)
	key := KeyOf(s)
	nowN := now.UnixNano()
	var evs []Event
	st := t.lookup(key)
	var x *window
	switch {
	case st == nil:
		if s.Seq > t.cfg.MaxAhead && !t.cfg.AdoptStreams {
			return false, nil
		}
		x = &window{epoch: s.Epoch}
		if t.cfg.AdoptStreams && s.Seq > 1 {
			p := s.Seq - 1
			x.w, x.h, x.floor = p, p, p
			x.lost = []span{{1, p}}
		}
		st = &stream{key: key, wins: []*window{x}}
		t.streams[key] = st
		if _, ok := t.forgotten[key]; ok {
			delete(t.forgotten, key)
			st.dirty = true // the key is still listed in t.dirty
		}
	default:
		var i int
		i, x = st.find(s.Epoch)
		switch {
		case x == nil:
			if st.isRetired(s.Epoch) || s.Seq > t.cfg.MaxAhead {
				return false, nil
			}
			evs = append(evs, Event{Kind: EventEpochChanged, Key: key, Epoch: s.Epoch, OldEpoch: st.wins[0].epoch})
			x = &window{epoch: s.Epoch}
			st.wins = slices.Insert(st.wins, 0, x)
			for len(st.wins) > t.cfg.MaxEpochs {
				evs = t.retire(st, len(st.wins)-1, nowN, evs)
			}
		case s.Seq-x.w > t.cfg.MaxAhead:
			return false, nil
		case i > 0:
			if x.classify(s.Seq, t.cfg.MaxAhead).Kind == KindDuplicate {
				return false, nil
			}
			copy(st.wins[1:i+1], st.wins[:i])
			st.wins[0] = x
		}
	}
	evs, changed := x.commit(key, s.Seq, nowN, &t.cfg, evs)
	if !changed {
		return false, evs
	}
	x.active = nowN
	x.recordHash(s.Seq, bodyHash, t.cfg.HashHistory)
	st.compact = false
	t.markDirty(st)
	if len(st.wins) > 1 || x.unreported > 0 || st.watched {
		t.updateWatch(st)
	}
	return true, evs
}

// retire drops the state of st.wins[i] (never the most recently active one), remembering its epoch.
func (t *Tracker) retire(st *stream, i int, now int64, evs []Event) []Event {
	x := st.wins[i]
	evs = x.giveUpAll(st.key, &t.cfg, evs)
	evs = append(evs, Event{Kind: EventEpochRetired, Key: st.key, Epoch: x.epoch})
	st.wins = slices.Delete(st.wins, i, i+1)
	st.retired = append(st.retired, retired{epoch: x.epoch, at: now})
	if n := len(st.retired) - t.cfg.MaxRetiredEpochs; n > 0 {
		st.retired = slices.Delete(st.retired, 0, n)
	}
	return evs
}

func (t *Tracker) markDirty(st *stream) {
	if !st.dirty {
		st.dirty = true
		t.dirty = append(t.dirty, st.key)
	}
}

func (st *stream) needsWatch() bool {
	if len(st.wins) > 1 {
		return true
	}
	for _, x := range st.wins {
		if x.unreported > 0 {
			return true
		}
	}
	return false
}

func (t *Tracker) updateWatch(st *stream) {
	switch need := st.needsWatch(); {
	case need && !st.watched:
		st.watched = true
		t.watch[st] = struct{}{}
	case !need && st.watched:
		st.watched = false
		delete(t.watch, st)
	}
}

// TakeDirty appends to dst the keys of the streams changed (or forgotten) since the previous
// TakeDirty, clears their marks, and returns the extended slice. Each key appears once. For each
// key, persist AppendState's bytes, or delete the stored state when AppendState reports false.
//
// If persisting fails, the in-memory state is ahead of the store: restore each returned key with
// Load (the bytes still in the store) or Drop (none stored) before acking anything, so that a
// redelivery is not mistaken for a duplicate of a mark that was never stored.
func (t *Tracker) TakeDirty(dst []Key) []Key {
	for _, k := range t.dirty {
		if st := t.streams[k]; st != nil {
			if st.dirty {
				st.dirty = false
				dst = append(dst, k)
			}
			continue
		}
		if _, ok := t.forgotten[k]; ok {
			delete(t.forgotten, k)
			dst = append(dst, k)
		}
	}
	clear(t.dirty)
	t.dirty = t.dirty[:0]
	return dst
}

// Drop deletes k's in-memory state without reporting it through TakeDirty: use it to roll back a
// stream that has no stored state after a failed store transaction.
func (t *Tracker) Drop(k Key) {
	if st := t.streams[k]; st != nil {
		t.remove(k, st)
	}
}

// WindowInfo describes one epoch of a stream, for logs, status pages and tests.
type WindowInfo struct {
	Epoch int64
	// W is the watermark: every number up to W is committed or given up (Lost).
	W int64
	// H is the highest committed number; H == W when nothing is missing.
	H int64
	// Missing are the open gaps in (W, H), oldest first; Reported says whether each was reported,
	// Since when it was first noticed.
	Missing  []Range
	Reported []bool
	Since    []time.Time
	// Lost are the given-up ranges below W, including the unseen prefix of an adopted stream.
	Lost []Range
	// Floor is the number below which an adopted stream was never waited for (Config.AdoptStreams).
	Floor int64
	// Active is the time of the last commit.
	Active time.Time
}

// Info returns a copy of k's state, most recently active epoch first, and false if k is unknown.
func (t *Tracker) Info(k Key) ([]WindowInfo, bool) {
	st := t.streams[k]
	if st == nil {
		return nil, false
	}
	out := make([]WindowInfo, 0, len(st.wins))
	for _, x := range st.wins {
		wi := WindowInfo{Epoch: x.epoch, W: x.w, H: x.h, Floor: x.floor, Active: time.Unix(0, x.active)}
		for _, g := range x.missing {
			wi.Missing = append(wi.Missing, Range{g.lo, g.hi})
			wi.Reported = append(wi.Reported, g.reported)
			wi.Since = append(wi.Since, time.Unix(0, g.since))
		}
		for _, s := range x.lost {
			wi.Lost = append(wi.Lost, Range{s.lo, s.hi})
		}
		out = append(out, wi)
	}
	return out, true
}
