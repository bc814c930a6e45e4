package storetest

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"

	"github.com/rabbitkit/rabbitkit/consumer"
	"github.com/rabbitkit/rabbitkit/consumer/dedup"
)

func (s *suite[T]) scopeAndClaim(t *testing.T) {
	st := s.open(t, s.h.Fresh(t))
	ctx := context.Background()
	sc := st.Scope()
	if sc != consumer.ScopeExclusive && sc != consumer.ScopeShared {
		t.Fatalf("Scope() = %v, want ScopeExclusive or ScopeShared", sc)
	}
	r1, err := st.Claim(ctx)
	if err != nil {
		t.Fatalf("first Claim: %v", err)
	}
	r2, err := st.Claim(ctx)
	switch sc {
	case consumer.ScopeExclusive:
		if !errors.Is(err, consumer.ErrStoreInUse) {
			t.Fatalf("second Claim of an exclusive store: %v, want ErrStoreInUse", err)
		}
	case consumer.ScopeShared:
		if err != nil {
			t.Fatalf("second Claim of a shared store: %v", err)
		}
		r2()
	}
	r1()
	r2, err = st.Claim(ctx)
	if err != nil {
		t.Fatalf("Claim after release: %v", err)
	}
	r1() // a second release of the first claim must not free the claim taken since
	if _, err := st.Claim(ctx); sc == consumer.ScopeExclusive && !errors.Is(err, consumer.ErrStoreInUse) {
		t.Fatalf("Claim while claimed again, after a stale release: %v, want ErrStoreInUse", err)
	}
	r2()
	if sc == consumer.ScopeExclusive {
		r3, err := st.Claim(ctx)
		if err != nil {
			t.Fatalf("Claim after the last release: %v", err)
		}
		r3()
	}
	if st.Scope() != sc {
		t.Fatal("Scope changed")
	}
}

// An effect and its mark commit together: what commits is both counted and a duplicate from then
// on; an effect that fails after writing leaves neither its write nor its mark.
func (s *suite[T]) effectAndMarkAreAtomic(t *testing.T) {
	st := s.open(t, s.h.Fresh(t))
	w := s.window(t, st)
	b := w.commit(t, st,
		msg{stamp: stamp("a", 1), effect: "a1"},
		msg{stamp: stamp("a", 2), effect: "a2", fail: errors.New("refused")},
	)
	if b.Ops[0].Err != nil {
		t.Fatalf("op a/1: %v", b.Ops[0].Err)
	}
	if b.Ops[1].Err == nil {
		t.Fatal("op a/2 failed but has no Err")
	}
	if n := s.count(t, st, "a1"); n != 1 {
		t.Fatalf("effect a1 = %d, want 1", n)
	}
	if n := s.count(t, st, "a2"); n != 0 {
		t.Fatalf("failed effect a2 = %d, want 0: its write was not rolled back", n)
	}
	fresh := s.window(t, st) // what the next Run would load
	if k := fresh.tr.Classify(stamp("a", 1)).Kind; k != dedup.KindDuplicate {
		t.Fatalf("a/1 after commit classifies %v, want duplicate: the mark did not commit with the effect", k)
	}
	if k := fresh.tr.Classify(stamp("a", 2)).Kind; k != dedup.KindNew {
		t.Fatalf("a/2 (failed) classifies %v, want new: a mark committed without its effect", k)
	}
}

// A failing or panicking effect is rolled back alone; later ops of its stream are skipped; the
// rest of the batch commits.
func (s *suite[T]) failedEffectIsRolledBackAlone(t *testing.T) {
	st := s.open(t, s.h.Fresh(t))
	w := s.window(t, st)
	boom := errors.New("boom")
	msgs := []msg{
		{stamp: stamp("a", 1), effect: "a1"},
		{stamp: stamp("a", 2), effect: "a2", fail: boom},
		{stamp: stamp("a", 3), effect: "a3"}, // after the failure in its stream: skipped
		{stamp: stamp("b", 1), effect: "b1"},
		{stamp: stamp("b", 2), effect: "b2", panics: true},
		{stamp: stamp("b", 3)}, // mark only, after the panic: skipped too
		{stamp: stamp("c", 1), effect: "c1"},
	}
	b := w.commit(t, st, msgs...)
	wantErr := []error{nil, boom, consumer.ErrSkipped, nil, consumer.ErrPanic, consumer.ErrSkipped, nil}
	for i, want := range wantErr {
		got := b.Ops[i].Err
		if (want == nil) != (got == nil) || (want != nil && !errors.Is(got, want)) {
			t.Errorf("op %s: Err = %v, want %v", msgs[i].stamp, got, want)
		}
	}
	for key, want := range map[string]int64{"a1": 1, "a2": 0, "a3": 0, "b1": 1, "b2": 0, "c1": 1} {
		if n := s.count(t, st, key); n != want {
			t.Errorf("effect %s = %d, want %d", key, n, want)
		}
	}
	fresh := s.window(t, st)
	for i, m := range msgs {
		want := dedup.KindNew
		if wantErr[i] == nil {
			want = dedup.KindDuplicate
		}
		if k := fresh.tr.Classify(m.stamp).Kind; k != want {
			t.Errorf("%s after commit: %v, want %v", m.stamp, k, want)
		}
	}
	// The retry of what failed then succeeds and commits, in order, exactly once.
	retry := []msg{msgs[1], msgs[2], msgs[4], msgs[5]}
	for i := range retry {
		retry[i].fail, retry[i].panics = nil, false
	}
	w.commit(t, st, retry...)
	for _, key := range []string{"a1", "a2", "a3", "b1", "b2", "c1"} {
		if n := s.count(t, st, key); n != 1 {
			t.Errorf("effect %s after the retry = %d, want 1", key, n)
		}
	}
}

// A batch commits, its deliveries are never acked, and the process dies: the broker redelivers
// all of them to the next Run on the same state, where they are duplicates.
func (s *suite[T]) crashBetweenCommitAndAck(t *testing.T) {
	open := s.h.Fresh(t)
	st := s.open(t, open)
	w := s.window(t, st)
	var msgs []msg
	for seq := int64(1); seq <= 5; seq++ {
		msgs = append(msgs, msg{stamp: stamp("a", seq), effect: fmt.Sprint("a", seq)})
	}
	w.commit(t, st, msgs...)
	if err := st.Close(); err != nil { // no ack was sent: every delivery comes back
		t.Fatalf("Close: %v", err)
	}

	st = s.open(t, open)
	w = s.window(t, st)
	redelivered := append(slices.Clone(msgs), msg{stamp: stamp("a", 6), effect: "a6"})
	b, idx := w.batch(redelivered)
	switch st.Scope() {
	case consumer.ScopeExclusive:
		if len(b.Ops) != 1 {
			t.Fatalf("%d of 6 deliveries classify as new after reopening; want 1 (a/6)", len(b.Ops))
		}
	case consumer.ScopeShared:
		// The store decides in its transaction: hand it everything, as a Run with a cold cache would.
		b, idx = s.unfiltered(w, redelivered)
	}
	if err := st.Commit(context.Background(), b); err != nil {
		t.Fatalf("Commit of the redeliveries: %v", err)
	}
	for j, op := range b.Ops {
		m := redelivered[idx[j]]
		isNew := m.stamp.Seq == 6
		if op.Err != nil {
			t.Fatalf("op %s: %v", m.stamp, op.Err)
		}
		if !isNew && op.Verdict.Kind != dedup.KindDuplicate {
			t.Errorf("redelivered %s committed as %v: it was committed before the crash", m.stamp, op.Verdict)
		}
	}
	for seq := int64(1); seq <= 6; seq++ {
		if n := s.count(t, st, fmt.Sprint("a", seq)); n != 1 {
			t.Errorf("effect a%d = %d after the redelivery, want 1", seq, n)
		}
	}
}

// unfiltered is w.batch without the window's filter: every message becomes a marked op.
func (s *suite[T]) unfiltered(w *window[T], msgs []msg) (*consumer.Batch[T], []int) {
	b, _ := w.batch(nil)
	var idx []int
	for i, m := range msgs {
		op := consumer.Op[T]{Key: dedup.KeyOf(m.stamp), Stamp: m.stamp, Mark: true, Verdict: dedup.Verdict{Kind: dedup.KindNew}}
		if m.effect != "" {
			op.Effect = s.effect(m)
		}
		b.Ops = append(b.Ops, op)
		idx = append(idx, i)
	}
	return b, idx
}

// Concurrent batches (as from several workers) all commit; effects on a key they share lose no
// update; the state of every stream is there afterwards.
func (s *suite[T]) concurrentBatches(t *testing.T) {
	st := s.open(t, s.h.Fresh(t))
	const writers, batches, per = 8, 10, 5
	ws := make([]*window[T], writers)
	for i := range ws {
		ws[i] = s.window(t, st)
	}
	errs := make(chan error, writers*batches)
	var wg sync.WaitGroup
	for i, w := range ws {
		wg.Go(func() {
			stream := fmt.Sprint("w", i) // one stream per writer, as a worker owns its streams
			for j := range batches {
				var msgs []msg
				for k := range per {
					seq := int64(j*per + k + 1)
					msgs = append(msgs, msg{stamp: stamp(stream, seq), effect: "shared"})
				}
				msgs[0].effect = fmt.Sprint(stream, "-", j)
				b, _ := w.batch(msgs)
				if err := st.Commit(context.Background(), b); err != nil {
					errs <- err
					return
				}
				for _, op := range b.Ops {
					if op.Err != nil {
						errs <- fmt.Errorf("op %s: %w", op.Stamp, op.Err)
						return
					}
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	if n, want := s.count(t, st, "shared"), int64(writers*batches*(per-1)); n != want {
		t.Fatalf("shared counter = %d, want %d: concurrent effects lost updates", n, want)
	}
	fresh := s.window(t, st)
	for i := range writers {
		for seq := int64(1); seq <= batches*per; seq++ {
			if k := fresh.tr.Classify(stamp(fmt.Sprint("w", i), seq)).Kind; k != dedup.KindDuplicate {
				t.Fatalf("w%d/%d after the concurrent commits: %v, want duplicate", i, seq, k)
			}
		}
		if n := s.count(t, st, fmt.Sprint("w", i, "-", batches-1)); n != 1 {
			t.Fatalf("effect of w%d's last batch = %d, want 1", i, n)
		}
	}
}

// Load after reopening returns exactly what was committed: the latest state of every stream, none
// of a deleted one.
func (s *suite[T]) loadAfterReopen(t *testing.T) {
	open := s.h.Fresh(t)
	st := s.open(t, open)
	ctx := context.Background()
	states, err := st.Load(ctx)
	if err != nil || len(states) != 0 {
		t.Fatalf("Load of a fresh store: %d states, %v; want none", len(states), err)
	}
	w := s.window(t, st)
	w.commit(t, st, msg{stamp: stamp("a", 1)}, msg{stamp: stamp("a", 2)}, msg{stamp: stamp("b", 1)}, msg{stamp: stamp("c", 1)})
	w.commit(t, st, msg{stamp: stamp("a", 3)}, msg{stamp: stamp("b", 3)}) // b/2 missing: a gap
	if st.Scope() == consumer.ScopeExclusive {
		// The Run deletes a forgotten stream by handing a nil state.
		del := &consumer.Batch[T]{States: func([]bool) []consumer.StreamState {
			return []consumer.StreamState{{Key: keyOf("c")}}
		}}
		if err := st.Commit(ctx, del); err != nil {
			t.Fatalf("Commit of a deletion: %v", err)
		}
		w.tr.Drop(keyOf("c"))
	}
	want := map[dedup.Key][]byte{}
	for _, k := range []dedup.Key{keyOf("a"), keyOf("b"), keyOf("c")} {
		if buf, ok := w.tr.AppendState(nil, k); ok {
			want[k] = buf
		}
	}
	if err := st.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}

	st = s.open(t, open)
	states, err = st.Load(ctx)
	if err != nil {
		t.Fatalf("Load after reopen: %v", err)
	}
	got := map[dedup.Key][]byte{}
	for _, x := range states {
		if _, dup := got[x.Key]; dup {
			t.Fatalf("Load returned stream %s twice", x.Key)
		}
		got[x.Key] = x.State
	}
	if st.Scope() == consumer.ScopeExclusive {
		if len(got) != len(want) {
			t.Fatalf("Load after reopen: streams %v, want %v", keys(got), keys(want))
		}
		for k, buf := range want {
			if !slices.Equal(got[k], buf) {
				t.Fatalf("stream %s: state not as committed", k)
			}
		}
	}
	fresh := s.window(t, st)
	for _, c := range []struct {
		stream string
		seq    int64
		want   dedup.Kind
	}{{"a", 3, dedup.KindDuplicate}, {"a", 4, dedup.KindNew}, {"b", 2, dedup.KindNew}, {"b", 3, dedup.KindDuplicate}} {
		if k := fresh.tr.Classify(stamp(c.stream, c.seq)).Kind; k != c.want {
			t.Errorf("%s/%d after reopen: %v, want %v", c.stream, c.seq, k, c.want)
		}
	}
}

func keys(m map[dedup.Key][]byte) []string {
	var out []string
	for k := range m {
		out = append(out, k.String())
	}
	slices.Sort(out)
	return out
}

// Close is idempotent, and every call after it returns ErrClosed.
func (s *suite[T]) close(t *testing.T) {
	st := s.open(t, s.h.Fresh(t))
	ctx := context.Background()
	if err := st.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if err := st.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if err := st.Commit(ctx, &consumer.Batch[T]{}); !errors.Is(err, consumer.ErrClosed) {
		t.Errorf("Commit after Close: %v, want ErrClosed", err)
	}
	if _, err := st.Load(ctx); !errors.Is(err, consumer.ErrClosed) {
		t.Errorf("Load after Close: %v, want ErrClosed", err)
	}
	if err := st.View(ctx, func(T) error { return nil }); !errors.Is(err, consumer.ErrClosed) {
		t.Errorf("View after Close: %v, want ErrClosed", err)
	}
	if _, err := st.Claim(ctx); !errors.Is(err, consumer.ErrClosed) {
		t.Errorf("Claim after Close: %v, want ErrClosed", err)
	}
}
