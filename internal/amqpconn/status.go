package amqpconn

import (
	"sync"
	"time"
)

// Status is a connection owner's readiness and last connection error. The goroutine that owns the
// connection writes it (Set, Fail, and Dialer.OnError = Status.Fail); any goroutine reads it, for a
// readiness wait, statistics or a health check. Make it with NewStatus.
type Status struct {
	mu      sync.Mutex
	url     string
	ready   chan struct{} // closed while up; replaced by an open one when it goes down
	up      bool
	lastErr error
	lastAt  time.Time
}

// NewStatus returns a Status that is down, with no error.
func NewStatus() *Status { return &Status{ready: make(chan struct{})} }

// Set records the URL in use and whether the session is up.
func (s *Status) Set(url string, up bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.url = url
	switch {
	case up && !s.up:
		close(s.ready)
	case !up && s.up:
		s.ready = make(chan struct{})
	}
	s.up = up
}

// Fail records a connection error (nil is ignored): a failed dial, a failed set-up, the end of a
// session. It stays the last error after a later session comes up.
func (s *Status) Fail(err error) {
	if err == nil {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.lastErr, s.lastAt = err, time.Now()
}

// Snapshot is a copy of a Status.
type Snapshot struct {
	URL     string
	Up      bool
	LastErr error
	LastAt  time.Time
}

// Snapshot returns the URL, whether the session is up, the last error and when it happened.
func (s *Status) Snapshot() Snapshot {
	s.mu.Lock()
	defer s.mu.Unlock()
	return Snapshot{URL: s.url, Up: s.up, LastErr: s.lastErr, LastAt: s.lastAt}
}

// Ready returns a channel that is closed while the session is up.
func (s *Status) Ready() <-chan struct{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.ready
}
