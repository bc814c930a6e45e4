package storetest

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/rabbitkit/rabbitkit/consumer"
	"github.com/rabbitkit/rabbitkit/consumer/dedup"
)

// shared runs the ScopeShared cases: two stores open on one state at once, as two replicas.
func (s *suite[T]) shared(t *testing.T) {
	open := s.h.Fresh(t)
	st := s.open(t, open)
	if st.Scope() != consumer.ScopeShared {
		t.Skip("exclusive store")
	}
	if _, ok := st.(consumer.SharedStore); !ok {
		t.Fatalf("a ScopeShared store (%T) must implement consumer.SharedStore", st)
	}
	_ = st.Close()
	t.Run("ConcurrentSameStamps", func(t *testing.T) { s.sharedSameStamps(t) })
	t.Run("PeekSeesOtherStore", func(t *testing.T) { s.sharedPeek(t) })
	t.Run("GapReportedOnce", func(t *testing.T) { s.sharedGapOnce(t) })
}

// cache is an empty window: what a Run on a shared store starts with (its tracker is only a cache).
func (s *suite[T]) cache(t *testing.T) *window[T] {
	tr, err := dedup.New(dedup.Config{})
	if err != nil {
		t.Fatal(err)
	}
	return &window[T]{s: s, tr: tr}
}

// replicas opens two stores on one fresh state.
func (s *suite[T]) replicas(t *testing.T) (a, b consumer.Store[T]) {
	open := s.h.Fresh(t)
	return s.open(t, open), s.open(t, open)
}

// Two replicas commit the same stamps at the same time (a redelivery to the other consumer while
// the first is still committing): every effect is applied exactly once, and of each pair of ops
// exactly one comes back KindNew; the other is KindDuplicate, without error.
func (s *suite[T]) sharedSameStamps(t *testing.T) {
	a, b := s.replicas(t)
	const streams, batches, per = 4, 8, 5
	var mu sync.Mutex
	newCount := map[string]int{}
	errs := make(chan error, 2*streams)
	var wg sync.WaitGroup
	for _, st := range []consumer.Store[T]{a, b} {
		for k := range streams {
			wg.Go(func() {
				w := s.cache(t)
				stream := fmt.Sprint("s", k)
				for j := range batches {
					var msgs []msg
					for i := range per {
						seq := int64(j*per + i + 1)
						msgs = append(msgs, msg{stamp: stamp(stream, seq), effect: fmt.Sprint(stream, "-", seq)})
					}
					bt, idx := s.unfiltered(w, msgs)
					if err := st.Commit(context.Background(), bt); err != nil {
						errs <- fmt.Errorf("commit: %w", err)
						return
					}
					mu.Lock()
					for n, op := range bt.Ops {
						switch {
						case op.Err != nil:
							errs <- fmt.Errorf("op %s: %w", msgs[idx[n]].stamp, op.Err)
						case op.Verdict.Kind == dedup.KindNew:
							newCount[msgs[idx[n]].effect]++
						case op.Verdict.Kind != dedup.KindDuplicate:
							errs <- fmt.Errorf("op %s: verdict %v, want new or duplicate", msgs[idx[n]].stamp, op.Verdict)
						}
					}
					mu.Unlock()
				}
			})
		}
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	for k := range streams {
		for seq := 1; seq <= batches*per; seq++ {
			key := fmt.Sprint("s", k, "-", seq)
			if n := s.count(t, a, key); n != 1 {
				t.Errorf("effect %s = %d, want 1", key, n)
			}
			if newCount[key] != 1 {
				t.Errorf("%s came back KindNew from %d stores, want 1", key, newCount[key])
			}
		}
	}
}

// Peek returns what another replica committed, and nothing for a stream without state.
func (s *suite[T]) sharedPeek(t *testing.T) {
	a, b := s.replicas(t)
	w := s.window(t, a)
	w.commit(t, a, msg{stamp: stamp("a", 1)}, msg{stamp: stamp("a", 2)}, msg{stamp: stamp("a", 3), effect: "a3"})
	states, err := b.(consumer.SharedStore).Peek(context.Background(), []dedup.Key{keyOf("a"), keyOf("nothing")})
	if err != nil {
		t.Fatalf("Peek: %v", err)
	}
	if len(states) != 1 || states[0].Key != keyOf("a") {
		t.Fatalf("Peek(a, nothing) = %v, want the state of a only", states)
	}
	tr, err := dedup.New(b.(consumer.SharedStore).DedupConfig())
	if err != nil {
		t.Fatal(err)
	}
	if err := tr.Load(states[0].Key, states[0].State); err != nil {
		t.Fatalf("Peek returned a state the tracker cannot decode: %v", err)
	}
	if k := tr.Classify(stamp("a", 3)).Kind; k != dedup.KindDuplicate {
		t.Errorf("a/3 after Peek: %v, want duplicate", k)
	}
	if k := tr.Classify(stamp("a", 4)).Kind; k != dedup.KindNew {
		t.Errorf("a/4 after Peek: %v, want new", k)
	}
}

// A gap is reported by exactly one of two replicas expiring at the same time, and a number the
// other replica committed is not a gap.
func (s *suite[T]) sharedGapOnce(t *testing.T) {
	a, b := s.replicas(t)
	ctx := context.Background()
	wa, wb := s.cache(t), s.cache(t)
	commit := func(st consumer.Store[T], w *window[T], msgs ...msg) {
		t.Helper()
		bt, _ := s.unfiltered(w, msgs)
		if err := st.Commit(ctx, bt); err != nil {
			t.Fatalf("Commit: %v", err)
		}
		for _, op := range bt.Ops {
			if op.Err != nil || op.Verdict.Kind != dedup.KindNew {
				t.Fatalf("op %s: %v, %v; want new, applied", op.Stamp, op.Verdict, op.Err)
			}
		}
	}
	commit(a, wa, msg{stamp: stamp("g", 1)}, msg{stamp: stamp("g", 3)}, msg{stamp: stamp("f", 1)}, msg{stamp: stamp("f", 3)})
	commit(b, wb, msg{stamp: stamp("f", 2)}) // fills a's gap in f: not a gap any more

	grace := a.(consumer.SharedStore).DedupConfig().GapGrace
	expire := func(at time.Time) []dedup.Event {
		var mu sync.Mutex
		var all []dedup.Event
		var wg sync.WaitGroup
		for _, st := range []consumer.Store[T]{a, b, a, b} {
			wg.Go(func() {
				bt := &consumer.Batch[T]{Expire: at}
				if err := st.Commit(ctx, bt); err != nil {
					t.Errorf("Commit(Expire): %v", err)
					return
				}
				mu.Lock()
				all = append(all, bt.Events...)
				mu.Unlock()
			})
		}
		wg.Wait()
		return all
	}
	if evs := expire(time.Now().Add(grace / 2)); len(evs) != 0 {
		t.Fatalf("events before the gap's grace ended: %v", evs)
	}
	evs := expire(time.Now().Add(grace + time.Second))
	var gaps []dedup.Event
	for _, e := range evs {
		if e.Kind == dedup.EventGapDetected {
			gaps = append(gaps, e)
		}
	}
	if len(gaps) != 1 || gaps[0].Key != keyOf("g") || gaps[0].From != 2 || gaps[0].To != 2 {
		t.Fatalf("gap events across two replicas expiring at once: %v, want one: g 2..2", gaps)
	}
	if evs := expire(time.Now().Add(grace + 2*time.Second)); len(evs) != 0 {
		t.Fatalf("events of a second expiry: %v, want none (reported once)", evs)
	}
	// The late number is still handled once, and reported late.
	bt, _ := s.unfiltered(wb, []msg{{stamp: stamp("g", 2), effect: "g2"}})
	if err := b.Commit(ctx, bt); err != nil {
		t.Fatalf("Commit: %v", err)
	}
	if bt.Ops[0].Verdict.Kind != dedup.KindNew || !bt.Ops[0].Verdict.Has(dedup.FlagLate) {
		t.Errorf("g/2 after its gap was reported: %v, want new+late", bt.Ops[0].Verdict)
	}
	late := false
	for _, e := range bt.Events {
		late = late || e.Kind == dedup.EventLateArrival
	}
	if !late {
		t.Errorf("committing g/2 returned events %v, want a late arrival", bt.Events)
	}
}
