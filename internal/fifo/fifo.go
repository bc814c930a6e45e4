// Package fifo is an unbounded FIFO between goroutines: Push never blocks (the library's progress
// never depends on another goroutine draining a channel), and Signal wakes the one that drains it.
// Its length is bounded by the callers (the consumer's deliveries by the prefetch count).
package fifo

import "sync"

// Queue is an unbounded FIFO of T, safe for concurrent use. Make it with New.
type Queue[T any] struct {
	mu     sync.Mutex
	items  []T
	signal chan struct{} // capacity 1: "something was pushed"
}

// New returns an empty queue.
func New[T any]() *Queue[T] { return &Queue[T]{signal: make(chan struct{}, 1)} }

// Signal returns the channel that receives a value after a Push (one for several pushes): wait on
// it, then Take.
func (q *Queue[T]) Signal() <-chan struct{} { return q.signal }

// Push appends v.
func (q *Queue[T]) Push(v ...T) {
	q.mu.Lock()
	q.items = append(q.items, v...)
	q.mu.Unlock()
	q.wake()
}

func (q *Queue[T]) wake() {
	select {
	case q.signal <- struct{}{}:
	default:
	}
}

// Take removes and returns up to max items (all when max <= 0), oldest first; nil when empty.
// When it leaves items behind, Signal fires again.
func (q *Queue[T]) Take(max int) []T {
	q.mu.Lock()
	defer q.mu.Unlock()
	n := len(q.items)
	if max > 0 && n > max {
		n = max
	}
	if n == 0 {
		return nil
	}
	out := make([]T, n)
	copy(out, q.items)
	rest := copy(q.items, q.items[n:])
	clear(q.items[rest:])
	q.items = q.items[:rest]
	if rest > 0 { // keep the consumer awake for the rest
		q.wake()
	}
	return out
}
