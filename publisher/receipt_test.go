package publisher

import (
	"errors"
	"math/rand/v2"
	"testing"
)

// journaledReceipt is a receipt of p whose message was journaled with id, as setJournaled leaves it.
func journaledReceipt(p *Publisher, id uint64) *Receipt {
	r := &Receipt{p: p, journaled: make(chan struct{}), id: id}
	close(r.journaled)
	return r
}

func TestReceiptErrNilWhilePending(t *testing.T) {
	p := &Publisher{}
	p.fr.init()
	notJournaled := &Receipt{p: p, journaled: make(chan struct{})}
	if err := notJournaled.Err(); err != nil {
		t.Fatalf("Err before journaling: %v, want nil", err)
	}
	r := journaledReceipt(p, 3)
	assertPending(t, r, "journaled, not settled")
	p.fr.advance(2)
	assertPending(t, r, "frontier below it")
	p.fr.advance(3)
	select {
	case <-r.Done():
	default:
		t.Fatal("Done open once the frontier passed the receipt")
	}
	if err := r.Err(); err != nil {
		t.Fatalf("confirmed: Err() = %v", err)
	}

	failed := &Receipt{p: p, journaled: make(chan struct{}), jerr: ErrBufferFull}
	close(failed.journaled)
	if err := failed.Err(); !errors.Is(err, ErrBufferFull) {
		t.Fatalf("journaling failed: Err() = %v", err)
	}
	<-failed.Done()

	late := journaledReceipt(p, 4)
	p.fr.close()
	if err := late.Err(); !errors.Is(err, ErrUnconfirmed) {
		t.Fatalf("after close: Err() = %v, want ErrUnconfirmed", err)
	}
}

// TestConfirmedNeverForgotten parks more messages than the frontier keeps the details of, with
// confirmed ones between them, and asks about each receipt only afterwards (and one while waiting):
// confirmed ones must report nil, never ErrOutcomeForgotten.
func TestConfirmedNeverForgotten(t *testing.T) {
	p := &Publisher{}
	p.fr.init()
	const n = 2*parkedMemory + 200
	parked := func(id uint64) bool { return id%2 == 0 || (id > 1000 && id < 1500) }
	// A receipt asked about early, behind every parking: resolved only at the end.
	early := []*Receipt{journaledReceipt(p, 1), journaledReceipt(p, 2), journaledReceipt(p, 1001), journaledReceipt(p, n-1)}
	for _, r := range early {
		assertPending(t, r, "before any settling")
	}
	for id := uint64(1); id <= n; id++ {
		if parked(id) {
			p.fr.remember(&ParkedError{ID: id})
		}
	}
	p.fr.advance(n)
	check := func(r *Receipt) {
		t.Helper()
		err := r.Err()
		var pe *ParkedError
		switch {
		case !parked(r.id):
			if err != nil {
				t.Fatalf("confirmed id %d: %v", r.id, err)
			}
		case errors.As(err, &pe):
			if pe.ID != r.id {
				t.Fatalf("id %d: parked error of id %d", r.id, pe.ID)
			}
		case errors.Is(err, ErrOutcomeForgotten):
			if !errors.Is(err, ErrParked) {
				t.Fatalf("id %d: forgotten outcome does not wrap ErrParked: %v", r.id, err)
			}
		default:
			t.Fatalf("parked id %d: %v", r.id, err)
		}
	}
	for _, r := range early {
		check(r)
	}
	forgotten := 0
	for id := uint64(1); id <= n; id++ {
		r := journaledReceipt(p, id)
		check(r)
		if errors.Is(r.Err(), ErrOutcomeForgotten) {
			forgotten++
		}
	}
	if forgotten == 0 {
		t.Fatal("no parking was evicted: the test does not exercise the forgotten path")
	}
	if len(p.fr.evicted) > n/2 {
		t.Errorf("%d runs for the evicted parkings", len(p.fr.evicted))
	}
}

func TestIDRuns(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for round := range 200 {
		var s idRuns
		model := map[uint64]bool{}
		for range rng.IntN(200) {
			id := uint64(rng.IntN(100)) + 1
			if round%2 == 0 {
				id = uint64(len(model)) + uint64(rng.IntN(3)) // mostly ascending, like parkings
			}
			s.add(id)
			model[id] = true
		}
		for id := uint64(0); id <= 300; id++ {
			if s.contains(id) != model[id] {
				t.Fatalf("round %d: contains(%d) = %v, want %v (runs %v)", round, id, s.contains(id), model[id], s)
			}
		}
		for i, r := range s {
			if r.lo > r.hi || (i > 0 && s[i-1].hi+1 >= r.lo) {
				t.Fatalf("round %d: runs not sorted, disjoint and apart: %v", round, s)
			}
		}
	}
}
