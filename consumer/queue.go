package consumer

import "sync"

// queue is an unbounded FIFO between goroutines: push never blocks (the library's progress never
// depends on another goroutine draining a channel), and signal wakes the consumer of the queue.
// Its length is bounded by the callers (deliveries by the prefetch count).
type queue[T any] struct {
	mu     sync.Mutex
	items  []T
	signal chan struct{} // capacity 1: "something was pushed"
}

func newQueue[T any]() *queue[T] { return &queue[T]{signal: make(chan struct{}, 1)} }

func (q *queue[T]) push(v ...T) {
	q.mu.Lock()
	q.items = append(q.items, v...)
	q.mu.Unlock()
	select {
	case q.signal <- struct{}{}:
	default:
	}
}

// take removes and returns up to max items (all when max <= 0), oldest first.
func (q *queue[T]) take(max int) []T {
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
		select {
		case q.signal <- struct{}{}:
		default:
		}
	}
	return out
}
