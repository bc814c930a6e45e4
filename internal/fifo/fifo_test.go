package fifo

import (
	"sync"
	"testing"
)

func TestQueue(t *testing.T) {
	q := New[int]()
	if q.Take(0) != nil {
		t.Fatal("empty queue gave items")
	}
	q.Push(1, 2, 3)
	<-q.Signal()
	if got := q.Take(2); len(got) != 2 || got[0] != 1 || got[1] != 2 {
		t.Fatalf("Take(2) = %v", got)
	}
	select {
	case <-q.Signal(): // items were left: signalled again
	default:
		t.Fatal("no signal for the item left")
	}
	if got := q.Take(0); len(got) != 1 || got[0] != 3 {
		t.Fatalf("Take(0) = %v", got)
	}
	// Concurrent pushes: nothing lost, each producer's order kept.
	var wg sync.WaitGroup
	for p := range 4 {
		wg.Go(func() {
			for i := range 1000 {
				q.Push(p*1000 + i)
			}
		})
	}
	wg.Wait()
	last := map[int]int{0: -1, 1: 999, 2: 1999, 3: 2999}
	n := 0
	for _, v := range q.Take(0) {
		if v <= last[v/1000] {
			t.Fatalf("%d after %d", v, last[v/1000])
		}
		last[v/1000] = v
		n++
	}
	if n != 4000 {
		t.Fatalf("%d items, want 4000", n)
	}
}
