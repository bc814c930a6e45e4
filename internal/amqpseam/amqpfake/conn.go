package amqpfake

import (
	"sync"
	"sync/atomic"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/rabbitkit/rabbitkit/internal/amqpseam"
)

// Conn is a fake connection.
type Conn struct {
	d      *Dialer
	mu     sync.Mutex
	closes chan *amqp.Error
	blocks []chan amqp.Blocking
	chans  chan *Channel
	cons   chan *Channel
	open   []*Channel
	dead   bool
	held   atomic.Bool
	holds  atomic.Int64
}

var _ amqpseam.Conn = (*Conn)(nil)

// Channel opens a channel; the test sees it (Chans) once its topology is declared.
func (c *Conn) Channel() (amqpseam.Channel, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.dead {
		return nil, amqp.ErrClosed
	}
	ch := &Channel{conn: c, closes: make(chan *amqp.Error, 1), pubs: make(chan Pub, 4096), settles: make(chan Settle, 4096)}
	c.open = append(c.open, ch)
	return ch, nil
}

// Closed implements amqpseam.Conn.
func (c *Conn) Closed() <-chan *amqp.Error { return c.closes }

// NotifyBlocked implements amqpseam.Conn.
func (c *Conn) NotifyBlocked(size int) <-chan amqp.Blocking {
	l := make(chan amqp.Blocking, size)
	if c.d.BlockedAtOpen.Load() {
		l <- amqp.Blocking{Active: true, Reason: "low on memory"}
	}
	c.mu.Lock()
	c.blocks = append(c.blocks, l)
	c.mu.Unlock()
	return l
}

// IsClosed implements amqpseam.Conn.
func (c *Conn) IsClosed() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.dead
}

// Close implements amqpseam.Conn: a clean close.
func (c *Conn) Close(time.Time) error { c.Fail(nil); return nil }

// ForceClose implements amqpseam.Conn.
func (c *Conn) ForceClose() { c.Fail(nil) }

// FrameMax implements amqpseam.Conn.
func (c *Conn) FrameMax() int {
	if c.d.FrameMax > 0 {
		return c.d.FrameMax
	}
	return 131072
}

// Hold implements amqpseam.Conn.
func (c *Conn) Hold() {
	c.holds.Add(1)
	if c.held.Swap(true) && c.d.RequireHold {
		c.d.Misuse.Add(1)
	}
}

// Release implements amqpseam.Conn.
func (c *Conn) Release() {
	if !c.held.Swap(false) && c.d.RequireHold {
		c.d.Misuse.Add(1)
	}
}

// Holds is how many times Hold was called.
func (c *Conn) Holds() int64 { return c.holds.Load() }

// Block sends connection.blocked (b.Active) or connection.unblocked to every blocked listener.
func (c *Conn) Block(b amqp.Blocking) {
	c.mu.Lock()
	ls := c.blocks
	c.mu.Unlock()
	for _, l := range ls {
		l <- b
	}
}

// Fail kills the connection with err (nil: a clean close), like amqp091-go's shutdown: the close
// notification, then every channel fails with the same error.
func (c *Conn) Fail(err *amqp.Error) {
	c.mu.Lock()
	if c.dead {
		c.mu.Unlock()
		return
	}
	c.dead = true
	chans := c.open
	c.mu.Unlock()
	if err != nil {
		c.closes <- err
	}
	close(c.closes)
	for _, ch := range chans {
		ch.Fail(err)
	}
}

// Chans yields the connection's channels once their topology is declared, in order.
func (c *Conn) Chans() <-chan *Channel { return c.chans }

// NextChan returns the connection's next channel with its topology declared, failing t after 5 s.
func (c *Conn) NextChan(t testing.TB) *Channel {
	t.Helper()
	return recv(t, c.chans, 5*time.Second, "channel")
}

// NextConsumer returns the connection's next channel that started consuming, failing t after 5 s:
// Deliver on it reaches the consumer.
func (c *Conn) NextConsumer(t testing.TB) *Channel {
	t.Helper()
	return recv(t, c.cons, 5*time.Second, "consumer")
}
