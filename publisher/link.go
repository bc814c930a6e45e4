package publisher

import (
	"context"
	"errors"
	"fmt"
	"net"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/rabbitkit/rabbitkit/internal/amqpconn"
	"github.com/rabbitkit/rabbitkit/topology"
)

// The narrow AMQP surface the sender uses. amqpConnector implements it over amqp091-go; the unit
// tests implement it with an in-process fake. Everything here is called from the sender goroutine
// only, except conn.forceClose, which Close may call from its own goroutine to unblock a write.

// connector dials a connection (retrying across URLs with backoff until ctx ends).
type connector interface {
	connect(ctx context.Context) (conn, string, error)
}

// conn is one AMQP connection.
type conn interface {
	// channel opens a channel in confirm mode with listeners sized for window unconfirmed messages,
	// and declares the topology on it.
	channel(ctx context.Context, window int) (channel, error)
	// blocked delivers connection.blocked / connection.unblocked.
	blocked() <-chan amqp.Blocking
	// closed yields the connection's close error (nil for a clean close), then is closed.
	closed() <-chan *amqp.Error
	isClosed() bool
	// close closes the connection, waiting at most until the deadline for the handshake.
	close(deadline time.Time)
	// forceClose unblocks any write in progress by closing the socket. Safe from any goroutine.
	forceClose()
	// hold holds writes back until release, which sends them in one write: a burst of publishes
	// costs one system call instead of one or two per message. A failed release has closed the
	// socket; the connection's close notification follows.
	hold()
	release()
}

// channel is one AMQP channel in confirm mode.
type channel interface {
	publish(ctx context.Context, exchange, key string, mandatory bool, msg amqp.Publishing) error
	// confirms delivers one Confirmation per publish, in delivery-tag order (amqp091-go expands
	// `multiple` and resequences); it is closed when the channel closes.
	confirms() <-chan amqp.Confirmation
	// returns delivers basic.return; every return precedes the confirm of the same message.
	returns() <-chan amqp.Return
	// closed yields the channel's close error, then is closed.
	closed() <-chan *amqp.Error
	close()
}

type amqpConnector struct {
	dialer   *amqpconn.Dialer
	topology topology.Topology
}

func (c *amqpConnector) connect(ctx context.Context) (conn, string, error) {
	ac, sock, url, err := c.dialer.DialSocket(ctx)
	if err != nil {
		return nil, "", err
	}
	w := &amqpConn{c: ac, sock: sock, topology: c.topology}
	w.batch, _ = sock.(*amqpconn.BatchConn)
	w.blocks = ac.NotifyBlocked(make(chan amqp.Blocking, 16))
	w.closes = ac.NotifyClose(make(chan *amqp.Error, 1))
	return w, url, nil
}

type amqpConn struct {
	c        *amqp.Connection
	sock     net.Conn            // c's socket, only for forceClose
	batch    *amqpconn.BatchConn // sock, when the dialer batches writes
	topology topology.Topology
	blocks   chan amqp.Blocking
	closes   chan *amqp.Error
}

func (w *amqpConn) blocked() <-chan amqp.Blocking { return w.blocks }
func (w *amqpConn) closed() <-chan *amqp.Error    { return w.closes }
func (w *amqpConn) isClosed() bool                { return w.c.IsClosed() }

func (w *amqpConn) close(deadline time.Time) { _ = w.c.CloseDeadline(deadline) }

// frameMax is the negotiated frame size (set during the handshake, read-only after it).
func (w *amqpConn) frameMax() int { return w.c.Config.FrameSize }

func (w *amqpConn) hold() {
	if w.batch != nil {
		w.batch.Hold()
	}
}

func (w *amqpConn) release() {
	if w.batch != nil {
		_ = w.batch.Release() // on error the socket is closed: the reader reports the loss
	}
}

// forceClose closes the socket: a write blocked by a broker alarm (or a full socket buffer) fails at
// once and releases the connection's write lock. amqp091-go's CloseDeadline is not enough: it can
// wait for a lock that the reader's shutdown holds while it waits behind that very write (seen in
// the consumer's parker under a memory alarm).
func (w *amqpConn) forceClose() { _ = w.sock.Close() }

func (w *amqpConn) channel(ctx context.Context, window int) (channel, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	ch, err := w.c.Channel()
	if err != nil {
		return nil, fmt.Errorf("publisher: open channel: %w", err)
	}
	if err := ch.Confirm(false); err != nil {
		_ = ch.Close()
		return nil, fmt.Errorf("publisher: confirm.select: %w", err)
	}
	// Buffers hold every notification the window can produce: amqp091-go's reader never waits on us,
	// so no notification is dropped after its 5 s timeout.
	c := &amqpChannel{
		ch:   ch,
		conf: ch.NotifyPublish(make(chan amqp.Confirmation, window+8)),
		ret:  ch.NotifyReturn(make(chan amqp.Return, window+8)),
		cls:  ch.NotifyClose(make(chan *amqp.Error, 1)),
	}
	if err := w.topology.DeclareConn(w.c, ch); err != nil {
		_ = ch.Close()
		return nil, err
	}
	return c, nil
}

type amqpChannel struct {
	ch   *amqp.Channel
	conf chan amqp.Confirmation
	ret  chan amqp.Return
	cls  chan *amqp.Error
}

func (c *amqpChannel) publish(ctx context.Context, exchange, key string, mandatory bool, msg amqp.Publishing) error {
	return c.ch.PublishWithContext(ctx, exchange, key, mandatory, false, msg)
}
func (c *amqpChannel) confirms() <-chan amqp.Confirmation { return c.conf }
func (c *amqpChannel) returns() <-chan amqp.Return        { return c.ret }
func (c *amqpChannel) closed() <-chan *amqp.Error         { return c.cls }
func (c *amqpChannel) close()                             { _ = c.ch.Close() }

// Channel-level reply codes (AMQP 0-9-1 spec): the broker closes the channel, the connection lives.
// Every other code (320 connection-forced, 501 frame error, 504 channel error, 541 internal error,
// network failures, ...) is treated as the loss of the connection.
func isChannelLevel(e *amqp.Error) bool {
	if e == nil {
		return false
	}
	switch e.Code {
	case amqp.ContentTooLarge, amqp.NoRoute, amqp.NoConsumers, amqp.AccessRefused, amqp.NotFound,
		amqp.ResourceLocked, amqp.PreconditionFailed:
		return true
	}
	return false
}

// amqpErr extracts the *amqp.Error from err, if any.
func amqpErr(err error) *amqp.Error {
	var e *amqp.Error
	if errors.As(err, &e) {
		return e
	}
	return nil
}
