package pginbox_test

import (
	"context"
	"sync"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/rabbitkit/rabbitkit/consumer"
	"github.com/rabbitkit/rabbitkit/consumer/dedup"
	"github.com/rabbitkit/rabbitkit/consumer/pginbox"
)

// A parked stamp (Op.Park) is accounted for: a resend is a duplicate. A re-driven copy
// (Op.Redrive) is applied once, decided in the transaction against the locked row, even when
// replicas commit re-driven copies at once; every later one is a duplicate and runs nothing.
func TestParkedRedriveOnce(t *testing.T) {
	pool, _ := freshPool(t, 8)
	s := open(t, pool, pginbox.Options{})
	ctx := context.Background()
	parkOp := markOp(stampOf("p", 2), nil)
	parkOp.Park = true
	if err := s.Commit(ctx, &consumer.Batch[pgx.Tx]{Ops: []consumer.Op[pgx.Tx]{incrOp(stampOf("p", 1), "p1"), parkOp, incrOp(stampOf("p", 3), "p3")}}); err != nil {
		t.Fatal(err)
	}
	resend := &consumer.Batch[pgx.Tx]{Ops: []consumer.Op[pgx.Tx]{incrOp(stampOf("p", 2), "p2")}}
	if err := s.Commit(ctx, resend); err != nil {
		t.Fatal(err)
	}
	if k := resend.Ops[0].Verdict.Kind; k != dedup.KindDuplicate {
		t.Fatalf("a resend of a parked stamp: %v, want duplicate", k)
	}
	states, err := s.Peek(ctx, []dedup.Key{dedup.KeyOf(stampOf("p", 2))})
	if err != nil || len(states) != 1 {
		t.Fatalf("Peek: %v %v", states, err)
	}
	tr, _ := dedup.New(s.DedupConfig())
	if err := tr.Load(states[0].Key, states[0].State); err != nil || !tr.IsParked(stampOf("p", 2)) {
		t.Fatalf("the committed state does not hold seq 2 as parked (%v)", err)
	}

	// Four replicas commit a re-driven copy at the same time.
	var wg sync.WaitGroup
	verdicts := make([]dedup.Kind, 4)
	for i := range verdicts {
		wg.Go(func() {
			op := incrOp(stampOf("p", 2), "p2")
			op.Redrive = true
			b := &consumer.Batch[pgx.Tx]{Ops: []consumer.Op[pgx.Tx]{op}}
			if err := s.Commit(ctx, b); err != nil {
				t.Error(err)
				return
			}
			verdicts[i] = b.Ops[0].Verdict.Kind
		})
	}
	wg.Wait()
	news := 0
	for _, k := range verdicts {
		switch k {
		case dedup.KindNew:
			news++
		case dedup.KindDuplicate:
		default:
			t.Errorf("verdict %v", k)
		}
	}
	if news != 1 || countOf(t, s, "p2") != 1 {
		t.Fatalf("%d re-driven copies applied, effect count %d: want exactly 1", news, countOf(t, s, "p2"))
	}
	// A re-drive of a stamp that was applied normally, never parked: a duplicate.
	op := incrOp(stampOf("p", 1), "p1")
	op.Redrive = true
	b := &consumer.Batch[pgx.Tx]{Ops: []consumer.Op[pgx.Tx]{op}}
	if err := s.Commit(ctx, b); err != nil {
		t.Fatal(err)
	}
	if b.Ops[0].Verdict.Kind != dedup.KindDuplicate || countOf(t, s, "p1") != 1 {
		t.Fatalf("re-drive of an applied stamp: %v, count %d", b.Ops[0].Verdict, countOf(t, s, "p1"))
	}
}

// Op.Start counts handler starts in the locked row, across replicas; the mark forgets the count;
// a committed stamp is not counted.
func TestStartCounts(t *testing.T) {
	pool, _ := freshPool(t, 4)
	s := open(t, pool, pginbox.Options{})
	ctx := context.Background()
	start := func(seq int64) (int64, dedup.Kind) {
		t.Helper()
		b := &consumer.Batch[pgx.Tx]{Ops: []consumer.Op[pgx.Tx]{{Key: dedup.KeyOf(stampOf("c", seq)), Stamp: stampOf("c", seq), Start: true}}}
		if err := s.Commit(ctx, b); err != nil {
			t.Fatal(err)
		}
		return b.Ops[0].Starts, b.Ops[0].Verdict.Kind
	}
	for want := int64(1); want <= 3; want++ {
		if n, k := start(1); n != want || k != dedup.KindNew {
			t.Fatalf("start %d: count %d, %v", want, n, k)
		}
	}
	if err := s.Commit(ctx, &consumer.Batch[pgx.Tx]{Ops: []consumer.Op[pgx.Tx]{incrOp(stampOf("c", 1), "c1")}}); err != nil {
		t.Fatal(err)
	}
	if n, k := start(1); n != 0 || k != dedup.KindDuplicate {
		t.Fatalf("start of a committed stamp: count %d, %v", n, k)
	}
	if n, _ := start(2); n != 1 {
		t.Fatalf("the mark of seq 1 must forget only its own count: seq 2 starts at %d", n)
	}
}
