package dedup

import (
	"bytes"
	"maps"
	"slices"
	"testing"
	"time"

	"github.com/rabbitkit/rabbitkit/protocol"
)

// absurdFloor: harness stamps at or above it are absurd jumps; real ones stay far below MaxAhead.
const absurdFloor = int64(1) << 40

type mkey struct {
	k     Key
	epoch int64
}

type mrec struct {
	at   int64 // commit time, ns since t0
	hash uint64
}

// mstate is everything the model knows; it is copied at every persist so that a crash can roll
// back to what the store holds.
type mstate struct {
	handled   map[mkey]map[int64]mrec // committed numbers
	reported  map[mkey]map[int64]bool // in a GapDetected or GapGivenUp event
	detected  map[mkey]map[int64]bool // in a GapDetected event
	forgotten map[mkey][]Range        // LostForgotten events
	givenUp   map[mkey]map[int64]bool // in a GapGivenUp event
	anchor    map[mkey]int64          // first number of an adopted stream (Config.AdoptStreams)
	retired   map[mkey]bool
	lastStep  map[mkey]int64 // commit counter of the last commit, for "most recently active"
	lastAt    map[mkey]int64 // time of the last commit
}

func newMstate() mstate {
	return mstate{
		handled: map[mkey]map[int64]mrec{}, reported: map[mkey]map[int64]bool{},
		detected: map[mkey]map[int64]bool{}, forgotten: map[mkey][]Range{},
		givenUp: map[mkey]map[int64]bool{}, anchor: map[mkey]int64{}, retired: map[mkey]bool{}, lastStep: map[mkey]int64{}, lastAt: map[mkey]int64{},
	}
}

// forget drops everything about k.
func (m mstate) forget(k Key) {
	for _, mm := range []map[mkey]map[int64]mrec{m.handled} {
		maps.DeleteFunc(mm, func(mk mkey, _ map[int64]mrec) bool { return mk.k == k })
	}
	maps.DeleteFunc(m.anchor, func(mk mkey, _ int64) bool { return mk.k == k })
	maps.DeleteFunc(m.forgotten, func(mk mkey, _ []Range) bool { return mk.k == k })
	for _, mm := range []map[mkey]map[int64]bool{m.reported, m.detected, m.givenUp} {
		maps.DeleteFunc(mm, func(mk mkey, _ map[int64]bool) bool { return mk.k == k })
	}
	maps.DeleteFunc(m.retired, func(mk mkey, _ bool) bool { return mk.k == k })
	maps.DeleteFunc(m.lastStep, func(mk mkey, _ int64) bool { return mk.k == k })
	maps.DeleteFunc(m.lastAt, func(mk mkey, _ int64) bool { return mk.k == k })
}

func cloneNested[V any](m map[mkey]map[int64]V) map[mkey]map[int64]V {
	out := make(map[mkey]map[int64]V, len(m))
	for k, v := range m {
		out[k] = maps.Clone(v)
	}
	return out
}

func (m mstate) clone() mstate {
	return mstate{
		handled: cloneNested(m.handled), reported: cloneNested(m.reported),
		detected: cloneNested(m.detected), forgotten: maps.Clone(m.forgotten),
		givenUp: cloneNested(m.givenUp), anchor: maps.Clone(m.anchor), retired: maps.Clone(m.retired), lastStep: maps.Clone(m.lastStep), lastAt: maps.Clone(m.lastAt),
	}
}

func set[V any](m map[mkey]map[int64]V, k mkey, n int64, v V) {
	if m[k] == nil {
		m[k] = map[int64]V{}
	}
	m[k][n] = v
}

// harness drives a Tracker and checks every answer against the model.
type harness struct {
	t       testing.TB
	cfg     Config
	tr      *Tracker
	now     int64 // ns since t0
	step    int64
	m       mstate
	durable mstate
	store   map[Key][]byte
	undone  []protocol.Stamp // committed since the last persist: redelivered after a crash
	hashes  map[protocol.Stamp]uint64
	keys    []Key
	counts  map[string]int
}

func newHarness(t testing.TB, cfg Config) *harness {
	h := &harness{t: t, cfg: cfg, tr: newTracker(t, cfg), m: newMstate(), store: map[Key][]byte{},
		hashes: map[protocol.Stamp]uint64{}, counts: map[string]int{}}
	h.durable = h.m.clone()
	return h
}

func (h *harness) at() time.Time { return t0.Add(time.Duration(h.now)) }

func (h *harness) fatalf(format string, args ...any) {
	h.t.Helper()
	h.t.Fatalf("t=%v step %d: "+format, append([]any{time.Duration(h.now), h.step}, args...)...)
}

func (h *harness) noteKey(k Key) {
	if !slices.Contains(h.keys, k) {
		h.keys = append(h.keys, k)
	}
}

// liveEpochs returns the epochs of k that have state in the model.
func (h *harness) liveEpochs(k Key) []mkey {
	var out []mkey
	for mk := range h.m.lastStep {
		if mk.k == k && !h.m.retired[mk] {
			out = append(out, mk)
		}
	}
	return out
}

// front returns the most recently committed live epoch of k.
func (h *harness) front(k Key) (mkey, bool) {
	var best mkey
	found := false
	for _, mk := range h.liveEpochs(k) {
		if !found || h.m.lastStep[mk] > h.m.lastStep[best] {
			best, found = mk, true
		}
	}
	return best, found
}

func (h *harness) knownStream(k Key) bool {
	for mk := range h.m.lastStep {
		if mk.k == k {
			return true
		}
	}
	for mk := range h.m.retired {
		if mk.k == k {
			return true
		}
	}
	return false
}

// deliver classifies s, runs the "handler" for new messages and commits, checking everything.
// hash is the body hash (0: none).
func (h *harness) deliver(s protocol.Stamp, hash uint64) {
	h.t.Helper()
	h.step++
	k, mk := KeyOf(s), mkey{KeyOf(s), s.Epoch}
	v := h.tr.Classify(s)
	want, flags := h.expect(s)
	if v.Kind != want || (want == KindNew && v.Flags != flags) {
		h.fatalf("Classify(%v) = %v, want %v flags %b", s, v, want, flags)
	}
	h.counts[v.String()]++
	if a := h.m.anchor[mk]; v.Kind == KindNew && s.Seq < a {
		h.counts["before-adoption"]++
	}
	if v.Kind == KindDuplicate && v.StoredHash != 0 && v.StoredHash != h.m.handled[mk][s.Seq].hash {
		h.fatalf("Classify(%v) stored hash %x, committed %x", s, v.StoredHash, h.m.handled[mk][s.Seq].hash)
	}
	// The runtime commits new messages after the handler and parked ones after parking; a commit of
	// anything else must be a no-op.
	wasKnown := h.knownStream(k)
	oldFront, _ := h.front(k)
	ok, evs := h.tr.Commit(s, hash, h.at())
	if ok != (v.Kind == KindNew) {
		h.fatalf("Commit(%v) = %v after %v", s, ok, v)
	}
	if !ok {
		if len(evs) != 0 {
			h.fatalf("Commit(%v) no-op returned events %v", s, evs)
		}
		return
	}
	late := false
	for _, e := range evs {
		switch e.Kind {
		case EventLateArrival:
			if e.Key != k || e.Epoch != s.Epoch || e.From != s.Seq || e.To != s.Seq || late {
				h.fatalf("Commit(%v): bad %v", s, e)
			}
			late = true
		case EventEpochChanged:
			if !wasKnown || e.Epoch != s.Epoch || e.OldEpoch != oldFront.epoch || h.m.lastStep[mk] != 0 {
				h.fatalf("Commit(%v): bad %v (old front %d)", s, e, oldFront.epoch)
			}
		case EventEpochRetired:
			// Only MaxEpochs retires at commit time: the least recently active epoch goes.
			rk := mkey{e.Key, e.Epoch}
			live := h.liveEpochs(k)
			if len(live) < h.cfg.MaxEpochs || rk.k != k {
				h.fatalf("Commit(%v): %v with only %d live epochs", s, e, len(live))
			}
			for _, o := range live {
				if o != rk && h.m.lastStep[o] < h.m.lastStep[rk] {
					h.fatalf("Commit(%v): %v but epoch %d was less recently active", s, e, o.epoch)
				}
			}
			h.m.retired[rk] = true
		default:
			h.checkGapEvent(e, false)
		}
	}
	if late != (flags&FlagLate != 0) {
		h.fatalf("Commit(%v): late event %v, flag %v; events %v", s, late, flags&FlagLate != 0, evs)
	}
	if !wasKnown && h.cfg.AdoptStreams {
		h.m.anchor[mk] = s.Seq
	}
	set(h.m.handled, mk, s.Seq, mrec{at: h.now, hash: hash})
	h.m.lastStep[mk] = h.step
	h.m.lastAt[mk] = h.now
	h.undone = append(h.undone, s)
	h.noteKey(k)
}

// expect returns the verdict the model predicts for s.
func (h *harness) expect(s protocol.Stamp) (Kind, Flags) {
	k, mk := KeyOf(s), mkey{KeyOf(s), s.Epoch}
	maxAhead := h.tr.Config().MaxAhead
	switch {
	case s.Validate() != nil:
		return KindSuspicious, 0
	case h.m.retired[mk]:
		return KindStaleEpoch, 0
	case !h.knownStream(k):
		if s.Seq > maxAhead && !h.cfg.AdoptStreams {
			return KindSuspicious, 0
		}
		return KindNew, FlagNewStream
	case h.m.lastStep[mk] == 0:
		if s.Seq > maxAhead {
			return KindSuspicious, 0
		}
		return KindNew, FlagNewEpoch
	case s.Seq-h.modelW(mk) > maxAhead:
		return KindSuspicious, 0
	}
	if _, done := h.m.handled[mk][s.Seq]; done || h.isForgotten(mk, s.Seq) {
		return KindDuplicate, 0
	}
	var f Flags
	if fr, _ := h.front(k); fr != mk {
		f = FlagOldEpoch
	}
	if h.m.reported[mk][s.Seq] {
		f |= FlagLate
	}
	return KindNew, f
}

// modelW is the watermark: the end of the prefix that is committed, given up or never waited for.
func (h *harness) modelW(mk mkey) int64 {
	w := max(h.m.anchor[mk]-1, 0)
	for {
		_, done := h.m.handled[mk][w+1]
		if !done && !h.m.givenUp[mk][w+1] {
			return w
		}
		w++
	}
}

// since is when the tracker first noticed n missing: the first commit of a higher number.
func (h *harness) since(mk mkey, n int64) (int64, bool) {
	best, ok := int64(0), false
	for m, r := range h.m.handled[mk] {
		if m > n && (!ok || r.at < best) {
			best, ok = r.at, true
		}
	}
	return best, ok
}

func (h *harness) isForgotten(mk mkey, n int64) bool {
	for _, r := range h.m.forgotten[mk] {
		if r.From <= n && n <= r.To {
			return true
		}
	}
	return false
}

// checkForgotten checks a LostForgotten event: the range held no committed number, and each of
// its numbers was given up, or was below an adopted stream's start.
func (h *harness) checkForgotten(e Event) {
	h.t.Helper()
	mk := mkey{e.Key, e.Epoch}
	if e.From < 1 || e.To < e.From {
		h.fatalf("bad range in %v", e)
	}
	for n := range h.m.handled[mk] {
		if e.From <= n && n <= e.To {
			h.fatalf("%v covers committed %d", e, n)
		}
	}
	if e.To-max(e.From, h.m.anchor[mk]) > 1<<20 {
		h.fatalf("given-up range in %v too long", e)
	}
	for n := max(e.From, h.m.anchor[mk]); n <= e.To; n++ {
		if !h.m.givenUp[mk][n] {
			h.fatalf("%v: %d was never given up", e, n)
		}
	}
	// Copy on write: the durable snapshot shares the slices.
	h.m.forgotten[mk] = append(slices.Clip(h.m.forgotten[mk]), Range{e.From, e.To})
	h.counts[e.Kind.String()]++
}

// checkGapEvent checks a GapDetected/GapGivenUp/LostForgotten event and records it.
func (h *harness) checkGapEvent(e Event, fromExpire bool) {
	h.t.Helper()
	if e.Kind == EventLostForgotten {
		h.checkForgotten(e)
		return
	}
	mk := mkey{e.Key, e.Epoch}
	if e.From < 1 || e.To < e.From || e.To-e.From > 1<<20 {
		h.fatalf("bad range in %v", e)
	}
	for n := e.From; n <= e.To; n++ {
		if _, done := h.m.handled[mk][n]; done {
			h.fatalf("%v covers committed %d", e, n)
		}
		if a := h.m.anchor[mk]; n < a {
			h.fatalf("%v covers %d below the adopted stream's start %d", e, n, a)
		}
		sn, ok := h.since(mk, n)
		switch e.Kind {
		case EventGapDetected:
			if !fromExpire || !ok || h.now-sn < int64(h.cfg.GapGrace) || h.m.detected[mk][n] || h.m.reported[mk][n] {
				h.fatalf("%v: %d not due (since %v, known %v, reported before %v)", e, n, time.Duration(sn), ok, h.m.reported[mk][n])
			}
			if e.Since.UnixNano() != t0.UnixNano()+sn {
				h.fatalf("%v: since %v, model %v", e, e.Since.Sub(t0), time.Duration(sn))
			}
			set(h.m.detected, mk, n, true)
			set(h.m.reported, mk, n, true)
		case EventGapGivenUp:
			if !ok {
				h.fatalf("%v: %d was never missing", e, n)
			}
			set(h.m.reported, mk, n, true)
			set(h.m.givenUp, mk, n, true)
		default:
			h.fatalf("unexpected event %v", e)
		}
	}
	h.counts[e.Kind.String()]++
}

// expire advances time by d, runs Expire and checks that exactly the due gaps were reported.
func (h *harness) expire(d time.Duration) {
	h.t.Helper()
	h.now += int64(d)
	h.step++
	evs := h.tr.Expire(h.at())
	for _, e := range evs {
		mk := mkey{e.Key, e.Epoch}
		switch e.Kind {
		case EventEpochRetired:
			fr, _ := h.front(e.Key)
			idleAll := h.now-h.m.lastAt[fr] >= int64(h.cfg.IdleRetention)
			if h.m.retired[mk] || (!idleAll && (fr == mk || h.now-h.m.lastAt[mk] < int64(h.cfg.EpochRetention))) {
				h.fatalf("Expire: %v not due (front %d)", e, fr.epoch)
			}
			h.m.retired[mk] = true
			h.counts[e.Kind.String()]++
		case EventStreamForgotten:
			fr, ok := h.front(e.Key)
			if !ok || h.cfg.ForgetAfter == 0 || h.now-h.m.lastAt[fr] < int64(h.cfg.ForgetAfter) {
				h.fatalf("Expire: %v not due", e)
			}
			h.m.forget(e.Key)
			h.counts[e.Kind.String()]++
		case EventEpochChanged, EventLateArrival:
			h.fatalf("Expire: unexpected %v", e)
		default:
			h.checkGapEvent(e, true)
		}
	}
	// Every live epoch: numbers missing for the grace are reported; stale epochs are retired.
	for mk, nums := range h.m.handled {
		if h.m.retired[mk] {
			continue
		}
		if fr, _ := h.front(mk.k); fr != mk && h.now-h.m.lastAt[mk] >= int64(h.cfg.EpochRetention) {
			h.fatalf("Expire: epoch %v not retired", mk)
		}
		top := int64(0)
		for n := range nums {
			top = max(top, n)
		}
		for n := max(int64(1), h.m.anchor[mk]); n < top; n++ {
			if _, done := nums[n]; done || h.m.reported[mk][n] {
				continue
			}
			if sn, _ := h.since(mk, n); h.now-sn >= int64(h.cfg.GapGrace) {
				h.fatalf("Expire: %v seq %d missing since %v not reported", mk, n, time.Duration(sn))
			}
		}
	}
}

// persist writes the changed streams to the store, as the consumer does before acking.
func (h *harness) persist() {
	h.t.Helper()
	for _, k := range h.tr.TakeDirty(nil) {
		b, ok := h.tr.AppendState(nil, k)
		if ok {
			h.store[k] = b
		} else {
			delete(h.store, k)
		}
	}
	h.durable = h.m.clone()
	h.undone = h.undone[:0]
}

// restart persists, builds a new tracker from the store and checks that nothing changed.
func (h *harness) restart() {
	h.t.Helper()
	h.persist()
	before := h.infos()
	h.reload()
	after := h.infos()
	for k, b := range before {
		if !bytes.Equal(b, after[k]) {
			h.fatalf("restart changed %v", k)
		}
	}
	if len(after) != len(before) {
		h.fatalf("restart: %d streams, want %d", len(after), len(before))
	}
}

// crash drops the tracker without persisting: the model rolls back to the store and the
// deliveries committed since are returned for redelivery.
func (h *harness) crash() []protocol.Stamp {
	h.t.Helper()
	redo := slices.Clone(h.undone)
	h.undone = h.undone[:0]
	h.m = h.durable.clone()
	h.reload()
	return redo
}

func (h *harness) reload() {
	h.t.Helper()
	h.tr = newTracker(h.t, h.cfg)
	for k, b := range h.store {
		if err := h.tr.Load(k, b); err != nil {
			h.fatalf("Load(%v): %v", k, err)
		}
	}
	if d := h.tr.TakeDirty(nil); len(d) != 0 {
		h.fatalf("Load left dirty streams %v", d)
	}
}

// infos encodes every stream's state for comparison (the encoding is canonical).
func (h *harness) infos() map[Key][]byte {
	out := map[Key][]byte{}
	for _, k := range h.keys {
		if b, ok := h.tr.AppendState(nil, k); ok {
			out[k] = b
		}
	}
	return out
}
