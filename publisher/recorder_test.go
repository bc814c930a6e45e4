package publisher

import "sync"

// recorder collects what a callback receives. Callbacks run on the Publisher's callback goroutine,
// so tests read through it (and wait for it with eventually).
type recorder[T any] struct {
	mu sync.Mutex
	v  []T
}

func (r *recorder[T]) add(v T) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.v = append(r.v, v)
}

func (r *recorder[T]) get() []T {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]T(nil), r.v...)
}
