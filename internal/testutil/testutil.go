// Package testutil holds small helpers that tests and benchmarks of several packages share. It
// imports nothing of the kit and nothing of AMQP; broker helpers live in internal/testbroker.
package testutil

import (
	"bytes"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/cenkalti/backoff/v4"
)

// SyncBuffer is a bytes.Buffer safe for a logger written from other goroutines while the test
// reads it.
type SyncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

// Write appends p.
func (s *SyncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

// String returns what was written so far.
func (s *SyncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// RoundRatios returns the minimum, median and maximum of num[i]/den[i] over the rounds both have:
// each benchmark round's own ratio of our path to its baseline. All zero when there are none.
func RoundRatios(num, den []float64) (lo, med, hi float64) {
	r := make([]float64, min(len(num), len(den)))
	for i := range r {
		r[i] = num[i] / den[i]
	}
	if len(r) == 0 {
		return 0, 0, 0
	}
	slices.Sort(r)
	return r[0], r[len(r)/2], r[len(r)-1]
}

// Eventually polls cond every 10 ms until it holds, and fails the test (t.Fatalf, so from the
// test's goroutine only) once d has passed, saying what it waited for.
func Eventually(t testing.TB, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", d, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// FastBackoff is the reconnect and retry schedule of fault tests: exponential from 20ms, capped at
// 200ms, ±30% jitter, never giving up.
func FastBackoff() backoff.BackOff {
	b := backoff.NewExponentialBackOff()
	b.InitialInterval = 20 * time.Millisecond
	b.MaxInterval = 200 * time.Millisecond
	b.RandomizationFactor = 0.3
	b.MaxElapsedTime = 0
	return b
}
