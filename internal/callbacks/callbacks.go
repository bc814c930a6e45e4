// Package callbacks runs a component's user callbacks (OnParked, OnStateChange, OnGap, ...) one at
// a time, in order, on one goroutine of their own, so that a slow callback delays only other
// callbacks, never the goroutine that owns a connection, and a panicking one is logged, not fatal.
// The publisher and the consumer both use it: one callback model for the kit.
package callbacks

import (
	"log/slog"
	"sync"

	"github.com/rabbitkit/rabbitkit/internal/fifo"
)

// Loop is one callback goroutine. Its creator owns it and must Close it.
type Loop struct {
	q    *fifo.Queue[func()]
	log  *slog.Logger
	what string

	stop      chan struct{}
	done      chan struct{}
	closeOnce sync.Once
}

// Start starts a loop; what names its owner in the log line of a panicking callback.
func Start(log *slog.Logger, what string) *Loop {
	l := &Loop{q: fifo.New[func()](), log: log, what: what, stop: make(chan struct{}), done: make(chan struct{})}
	go l.run()
	return l
}

// Push queues f. It never blocks. Callbacks pushed after Close are not run.
func (l *Loop) Push(f func()) { l.q.Push(f) }

// Close runs the callbacks pushed before it and stops the goroutine; it returns once it has. It is
// idempotent.
func (l *Loop) Close() {
	l.closeOnce.Do(func() { close(l.stop) })
	<-l.done
}

func (l *Loop) run() {
	defer close(l.done)
	for {
		select {
		case <-l.q.Signal():
			l.runAll()
		case <-l.stop:
			l.runAll()
			return
		}
	}
}

func (l *Loop) runAll() {
	for _, f := range l.q.Take(0) {
		l.call(f)
	}
}

func (l *Loop) call(f func()) {
	defer func() {
		if p := recover(); p != nil {
			l.log.Error(l.what+": callback panicked", "panic", p)
		}
	}()
	f()
}
