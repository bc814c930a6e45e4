// Package group holds the one step every group-commit loop of the kit shares: after taking its
// first request (blocking), a loop takes everything already waiting, without blocking, so that one
// transaction and one fsync serve them all. The journal's writer, the consumer's bbolt store, the
// publisher's appender and its deleter use it; what each does around it (the journal's linger,
// weighing a batch by ops or messages) stays with its loop.
package group

// Gather hands take every value already waiting on ch, without blocking, until take returns false
// (the batch is full), ch is empty, or ch is closed. It reports whether ch is still open.
func Gather[T any](ch <-chan T, take func(T) bool) (open bool) {
	for {
		select {
		case v, ok := <-ch:
			if !ok {
				return false
			}
			if !take(v) {
				return true
			}
		default:
			return true
		}
	}
}
