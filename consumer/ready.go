package consumer

import (
	"context"
	"fmt"
	"time"

	"github.com/rabbitkit/rabbitkit/internal/amqpconn"
)

// State is the connection state of a Consumer.
type State int32

const (
	// StateIdle: no Run is active (before the first, after one returned).
	StateIdle State = iota
	// StateConnecting: Run is dialing, declaring the topology or starting basic.consume, at
	// start or after a session was lost.
	StateConnecting
	// StateConsuming: a session is up and deliveries flow.
	StateConsuming
)

// String returns "idle", "connecting" or "consuming".
func (s State) String() string {
	switch s {
	case StateIdle:
		return "idle"
	case StateConnecting:
		return "connecting"
	case StateConsuming:
		return "consuming"
	}
	return fmt.Sprintf("state(%d)", int32(s))
}

// StateChange is passed to Config.OnStateChange.
type StateChange struct {
	From, To State
	URL      string // broker URL, password redacted
	// Err is what caused the change: why the session was lost (To is StateConnecting after
	// StateConsuming). Nil when a session came up or Run ended.
	Err error
}

// Status is a snapshot of a Consumer's connection.
type Status struct {
	State State
	URL   string // of the current or last session, password redacted
	// LastError is the latest connection error: a failed dial (a wrong password, a TLS failure, a
	// refused vhost, a refused TCP connection), a failed set-up (topology, qos, basic.consume: a
	// missing queue, an exclusive consumer elsewhere), or what ended a session. It stays after a
	// later session comes up (State tells whether it is current); nil if there was none.
	LastError   error
	LastErrorAt time.Time
}

// Status returns the Consumer's connection state and its last connection error.
func (c *Consumer[T]) Status() Status {
	sn := c.status.Snapshot()
	return Status{State: State(c.state.Load()), URL: amqpconn.Redact(sn.URL), LastError: sn.LastErr, LastErrorAt: sn.LastAt}
}

// WaitReady waits until a Run is consuming (StateConsuming) and returns nil then, at once if it
// is already. It returns ErrClosed once Close has begun. When ctx ends first it returns ctx's error
// together with the last connection error (errors.Is and errors.As see both), so that a wrong
// password, a TLS failure, a refused vhost or a missing queue is told in code:
//
//	consumer: not ready: context deadline exceeded; last error: amqpconn: dial amqp://guest:xxxxx@host:5672/: Exception (403) Reason: "username or password not allowed"
//
// Run it beside Run (which blocks), e.g. in a start-up check or a readiness probe.
func (c *Consumer[T]) WaitReady(ctx context.Context) error {
	select {
	case <-c.closing:
		return ErrClosed
	default:
	}
	select {
	case <-c.status.Ready():
		return nil
	case <-c.closing:
		return ErrClosed
	case <-ctx.Done():
		if last := c.status.Snapshot().LastErr; last != nil {
			return fmt.Errorf("consumer: not ready: %w; last error: %w", ctx.Err(), last)
		}
		return fmt.Errorf("consumer: not ready: %w", ctx.Err())
	}
}

// setState records a state change of the Run (on the Run goroutine) and queues OnStateChange.
func (r *run) setState(to State, url string, err error) {
	r.status.Fail(err)
	if url == "" { // keep the last session's URL
		url = r.status.Snapshot().URL
	}
	// The state first: WaitReady returns as soon as Set marks the session ready, and its caller
	// may read Status at once.
	from := State(r.state.Swap(int32(to)))
	r.status.Set(url, to == StateConsuming)
	if from == to {
		return
	}
	if cb := r.cfg.OnStateChange; cb != nil {
		sc := StateChange{From: from, To: to, URL: amqpconn.Redact(url), Err: err}
		r.events.Push(func() { cb(sc) })
	}
}
