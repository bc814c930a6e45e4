package publisher

import (
	"context"
	"errors"
	"fmt"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/rabbitkit/rabbitkit/internal/amqpseam"
	"github.com/rabbitkit/rabbitkit/topology"
)

// The sender works on the amqpseam surface (amqp091-go, or amqpfake in the unit tests). Everything
// is called from the sender goroutine only, except Conn.ForceClose, which Close may call from its
// own goroutine to unblock a write.

// blockedSize is the connection's blocked listener: it is registered right after dial and drained
// by the sender.
const blockedSize = 16

// pubChannel is a channel in confirm mode with its listeners; the close listener is
// ch.Closed().
type pubChannel struct {
	ch   amqpseam.Channel
	conf <-chan amqp.Confirmation // one per publish, in delivery-tag order; closed with the channel
	ret  <-chan amqp.Return       // basic.return; every return precedes the confirm of its message
}

// openChannel opens a channel on c in confirm mode with listeners sized for window unconfirmed
// messages, and declares topo on it.
func openChannel(ctx context.Context, c amqpseam.Conn, window int, topo topology.Topology) (pubChannel, error) {
	if err := ctx.Err(); err != nil {
		return pubChannel{}, err
	}
	ch, err := c.Channel()
	if err != nil {
		return pubChannel{}, fmt.Errorf("publisher: open channel: %w", err)
	}
	// Buffers hold every notification the window can produce: amqp091-go's reader never waits on us,
	// so no notification is dropped after its 5 s timeout.
	conf, err := ch.Confirm(window + 8)
	if err != nil {
		_ = ch.Close()
		return pubChannel{}, fmt.Errorf("publisher: confirm.select: %w", err)
	}
	pc := pubChannel{ch: ch, conf: conf, ret: ch.NotifyReturn(window + 8)}
	if err := ch.Declare(topo); err != nil {
		_ = ch.Close()
		return pubChannel{}, err
	}
	return pc, nil
}

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
