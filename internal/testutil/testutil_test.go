package testutil

import (
	"fmt"
	"sync"
	"testing"
)

func TestRoundRatios(t *testing.T) {
	for _, c := range []struct {
		num, den    []float64
		lo, med, hi float64
	}{
		{nil, nil, 0, 0, 0},
		{[]float64{1}, []float64{2}, 0.5, 0.5, 0.5},
		{[]float64{3, 1, 2, 9}, []float64{1, 1, 1}, 1, 2, 3}, // the extra round has no baseline
	} {
		lo, med, hi := RoundRatios(c.num, c.den)
		if lo != c.lo || med != c.med || hi != c.hi {
			t.Errorf("RoundRatios(%v, %v) = %v %v %v, want %v %v %v", c.num, c.den, lo, med, hi, c.lo, c.med, c.hi)
		}
	}
}

func TestSyncBufferConcurrent(t *testing.T) {
	var b SyncBuffer
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Go(func() { fmt.Fprintf(&b, "%d\n", i) })
	}
	wg.Wait()
	if n := len(b.String()); n != 16 {
		t.Fatalf("%d bytes, want 16", n)
	}
}
