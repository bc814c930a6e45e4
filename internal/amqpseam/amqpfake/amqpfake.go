// Package amqpfake is an in-process fake of the amqpseam surface in which the test plays the
// broker: it reads what the code under test publishes, acks and cancels, and answers with
// confirms, returns, deliveries, blocks and closes. The fake follows amqp091-go's semantics:
// delivery tags and publish sequence numbers start at 1 on every channel, confirms arrive in tag
// order, a return precedes the confirm of its message, a close notification is delivered before
// the listeners are closed, and every listener of a channel is closed when it closes.
//
// It is rabbitkit's one fake for both sides: the publisher's sender tests and the consumer's
// session tests run on it.
package amqpfake

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/rabbitkit/rabbitkit/internal/amqpseam"
)

// URL is what Dial reports as the URL that worked (with a password, to test redaction).
const URL = "amqp://guest:secret@fake:5672/"

// Dialer is the fake broker's front door. Its zero value is not usable: call New.
type Dialer struct {
	conns chan *Conn
	// Down makes Dial wait (like a dial retrying) while it is set.
	Down atomic.Bool
	// BlockedAtOpen: a blocked listener registered on a new connection starts with
	// connection.blocked pending, as RabbitMQ sends it right after connection.open-ok while an
	// alarm is in effect.
	BlockedAtOpen atomic.Bool
	// RequireHold counts, in Misuse, a publish outside Conn.Hold/Release, a Hold while held and a
	// Release while not held (the publisher's write-batching contract).
	RequireHold bool
	// Misuse counts violations of the hold contract (RequireHold).
	Misuse atomic.Int64
	// ChanErr, while set, fails every Channel.Declare with it and closes that channel (a 403 on
	// the topology, a 406 conflict); the connection stays open.
	ChanErr atomic.Pointer[amqp.Error]
	// FrameMax is every connection's negotiated frame size (0: 131072).
	FrameMax int

	mu     sync.Mutex
	queues map[string]queueState
}

type queueState struct {
	q   amqp.Queue
	err *amqp.Error
}

// New returns a fake broker with no connection yet.
func New() *Dialer { return &Dialer{conns: make(chan *Conn, 64)} }

var _ amqpseam.Dialer = (*Dialer)(nil)

// Dial makes a connection, once Down is clear, and hands it to the test (Conns).
func (d *Dialer) Dial(ctx context.Context) (amqpseam.Conn, string, error) {
	for d.Down.Load() {
		select {
		case <-ctx.Done():
			return nil, "", ctx.Err()
		case <-time.After(5 * time.Millisecond):
		}
	}
	c := &Conn{d: d, closes: make(chan *amqp.Error, 1), chans: make(chan *Channel, 64), cons: make(chan *Channel, 64)}
	select {
	case d.conns <- c:
	case <-ctx.Done():
		return nil, "", ctx.Err()
	}
	return c, URL, nil
}

// Conns yields every connection made, in order.
func (d *Dialer) Conns() <-chan *Conn { return d.conns }

// NextConn returns the next connection made, failing t after 5 s.
func (d *Dialer) NextConn(t testing.TB) *Conn {
	t.Helper()
	return recv(t, d.conns, 5*time.Second, "connection")
}

// recv returns the next value on ch, failing t after d.
func recv[T any](t testing.TB, ch <-chan T, d time.Duration, what string) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(d):
		t.Fatalf("amqpfake: no %s within %v", what, d)
		var zero T
		return zero
	}
}

// SetQueue sets what Inspect reports for name (its message and consumer counts).
func (d *Dialer) SetQueue(name string, messages, consumers int) {
	d.setQueue(name, queueState{q: amqp.Queue{Name: name, Messages: messages, Consumers: consumers}})
}

// SetQueueErr makes Inspect of name fail with err, closing its channel (a 404 when nil).
func (d *Dialer) SetQueueErr(name string, err *amqp.Error) {
	if err == nil {
		err = &amqp.Error{Code: amqp.NotFound, Reason: "NOT_FOUND - no queue '" + name + "'"}
	}
	d.setQueue(name, queueState{err: err})
}

func (d *Dialer) setQueue(name string, s queueState) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.queues == nil {
		d.queues = map[string]queueState{}
	}
	d.queues[name] = s
}

func (d *Dialer) queue(name string) queueState {
	d.mu.Lock()
	defer d.mu.Unlock()
	if s, ok := d.queues[name]; ok {
		return s
	}
	return queueState{q: amqp.Queue{Name: name}}
}
