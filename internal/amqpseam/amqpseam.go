// Package amqpseam is the one AMQP surface that publisher and consumer are written against: a
// Dialer that makes connections, a Conn and a Channel with just the operations the two sides use.
// Dial gives the real implementation over amqp091-go; package amqpfake gives an in-process fake in
// which the test plays the broker. Nothing in publisher/ or consumer/ touches *amqp.Connection or
// *amqp.Channel directly, so every decision they take on what the broker says (confirms, returns,
// acks, cancels, closes) can be unit-tested without a broker.
//
// The methods mirror amqp091-go's, with its semantics, which the fake copies: delivery tags and
// publish sequence numbers start at 1 on every channel; NotifyX listeners are registered before
// the operation whose notifications they receive; a close notification is delivered (at most once)
// before its listener channel is closed; amqp091-go's reader blocks on a full listener, so every
// listener is read by its owner or sized for everything it can receive.
//
// A Conn and its Channels are owned by one goroutine (docs/DESIGN.md, "Goroutines"); only
// Conn.ForceClose may be called from another.
package amqpseam

import (
	"context"
	"net"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/rabbitkit/rabbitkit/internal/amqpconn"
	"github.com/rabbitkit/rabbitkit/topology"
)

// Dialer makes connections, retrying across its URLs until one answers or ctx ends.
type Dialer interface {
	// Dial returns a connection and the URL that worked.
	Dial(ctx context.Context) (Conn, string, error)
}

// Conn is one AMQP connection.
type Conn interface {
	// Channel opens a channel. Its close listener (Channel.Closed) is registered at once.
	Channel() (Channel, error)
	// Closed yields the connection's close error (nil for a clean close), then is closed. It is
	// registered when the connection is made.
	Closed() <-chan *amqp.Error
	// NotifyBlocked registers a listener of size for connection.blocked / unblocked.
	NotifyBlocked(size int) <-chan amqp.Blocking
	IsClosed() bool
	// Close closes the connection, waiting at most until deadline for the broker's close-ok (a
	// dead or black-holed peer never answers).
	Close(deadline time.Time) error
	// ForceClose closes the socket: a write blocked by a broker alarm (or a full socket buffer)
	// fails at once and releases the connection's write lock. Safe from any goroutine.
	ForceClose()
	// Hold holds writes back until Release, which sends them in one write: a burst of publishes
	// costs one system call instead of one or two per message. Without a batching socket both do
	// nothing. A failed Release has closed the socket; the close notification follows.
	Hold()
	Release()
	// FrameMax is the negotiated frame size.
	FrameMax() int
}

// Channel is one AMQP channel.
type Channel interface {
	// Closed yields the channel's close error (nil for a clean close), then is closed.
	Closed() <-chan *amqp.Error
	IsClosed() bool
	Close() error

	// Confirm puts the channel in confirm mode and returns a listener of size confirmations:
	// one per publish, in tag order (amqp091-go expands `multiple`). It is closed with the channel.
	Confirm(size int) (<-chan amqp.Confirmation, error)
	// NotifyReturn registers a listener of size for basic.return; a return precedes the confirm
	// of the same message.
	NotifyReturn(size int) <-chan amqp.Return
	// NotifyCancel registers a listener of size for a basic.cancel sent by the broker (the queue
	// was deleted, or its node went away).
	NotifyCancel(size int) <-chan string
	// Publish sends one message (basic.publish, never immediate).
	Publish(ctx context.Context, exchange, key string, mandatory bool, msg amqp.Publishing) error

	// Declare declares t (topology.Topology.DeclareConn, on this channel and its connection).
	Declare(t topology.Topology) error
	// Inspect declares queue passively: its message and consumer counts, or a 404 that closes
	// the channel.
	Inspect(queue string) (amqp.Queue, error)
	// Qos sets the channel's prefetch count.
	Qos(prefetch int) error
	// Consume starts a consumer (manual acks) and returns its deliveries, closed when the channel
	// closes or Cancel is answered.
	Consume(queue, tag string, exclusive bool) (<-chan amqp.Delivery, error)
	// Cancel ends the consumer tag (basic.cancel, waiting for cancel-ok).
	Cancel(tag string) error
	Ack(tag uint64, multiple bool) error
	Nack(tag uint64, multiple, requeue bool) error
}

// Dial returns the Dialer over amqp091-go that d configures.
func Dial(d *amqpconn.Dialer) Dialer { return realDialer{d} }

type realDialer struct{ d *amqpconn.Dialer }

func (r realDialer) Dial(ctx context.Context) (Conn, string, error) {
	ac, sock, url, err := r.d.DialSocket(ctx)
	if err != nil {
		return nil, "", err
	}
	c := &realConn{c: ac, sock: sock, closes: ac.NotifyClose(make(chan *amqp.Error, 1))}
	c.batch, _ = sock.(*amqpconn.BatchConn)
	return c, url, nil
}

type realConn struct {
	c      *amqp.Connection
	sock   net.Conn            // c's socket, only for ForceClose
	batch  *amqpconn.BatchConn // sock, when the dialer batches writes
	closes chan *amqp.Error
}

func (w *realConn) Channel() (Channel, error) {
	ch, err := w.c.Channel()
	if err != nil {
		return nil, err
	}
	return &realChannel{ch: ch, conn: w.c, closes: ch.NotifyClose(make(chan *amqp.Error, 1))}, nil
}

func (w *realConn) Closed() <-chan *amqp.Error { return w.closes }
func (w *realConn) NotifyBlocked(size int) <-chan amqp.Blocking {
	return w.c.NotifyBlocked(make(chan amqp.Blocking, size))
}
func (w *realConn) IsClosed() bool                 { return w.c.IsClosed() }
func (w *realConn) Close(deadline time.Time) error { return w.c.CloseDeadline(deadline) }

// ForceClose: amqp091-go's CloseDeadline is not enough, it can wait for a lock that the reader's
// shutdown holds while it waits behind the very write to be ended (seen in the consumer's parker
// under a memory alarm).
func (w *realConn) ForceClose()   { _ = w.sock.Close() }
func (w *realConn) FrameMax() int { return w.c.Config.FrameSize }

func (w *realConn) Hold() {
	if w.batch != nil {
		w.batch.Hold()
	}
}

func (w *realConn) Release() {
	if w.batch != nil {
		_ = w.batch.Release() // on error the socket is closed: the reader reports the loss
	}
}

type realChannel struct {
	ch     *amqp.Channel
	conn   *amqp.Connection
	closes chan *amqp.Error
}

func (c *realChannel) Closed() <-chan *amqp.Error { return c.closes }
func (c *realChannel) IsClosed() bool             { return c.ch.IsClosed() }
func (c *realChannel) Close() error               { return c.ch.Close() }

func (c *realChannel) Confirm(size int) (<-chan amqp.Confirmation, error) {
	if err := c.ch.Confirm(false); err != nil {
		return nil, err
	}
	return c.ch.NotifyPublish(make(chan amqp.Confirmation, size)), nil
}

func (c *realChannel) NotifyReturn(size int) <-chan amqp.Return {
	return c.ch.NotifyReturn(make(chan amqp.Return, size))
}

func (c *realChannel) NotifyCancel(size int) <-chan string {
	return c.ch.NotifyCancel(make(chan string, size))
}

func (c *realChannel) Publish(ctx context.Context, exchange, key string, mandatory bool, msg amqp.Publishing) error {
	return c.ch.PublishWithContext(ctx, exchange, key, mandatory, false, msg)
}

func (c *realChannel) Declare(t topology.Topology) error { return t.DeclareConn(c.conn, c.ch) }

func (c *realChannel) Inspect(queue string) (amqp.Queue, error) {
	return c.ch.QueueDeclarePassive(queue, true, false, false, false, nil)
}

func (c *realChannel) Qos(prefetch int) error { return c.ch.Qos(prefetch, 0, false) }

// Consume, not ConsumeWithContext: the latter cancels from a goroutine of its own, and only the
// owning goroutine may touch the channel.
func (c *realChannel) Consume(queue, tag string, exclusive bool) (<-chan amqp.Delivery, error) {
	return c.ch.Consume(queue, tag, false, exclusive, false, false, nil)
}

func (c *realChannel) Cancel(tag string) error { return c.ch.Cancel(tag, false) }
func (c *realChannel) Ack(tag uint64, multiple bool) error {
	return c.ch.Ack(tag, multiple)
}
func (c *realChannel) Nack(tag uint64, multiple, requeue bool) error {
	return c.ch.Nack(tag, multiple, requeue)
}
