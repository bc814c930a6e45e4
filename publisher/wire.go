package publisher

import (
	"fmt"

	"github.com/rabbitkit/rabbitkit/internal/amqpwire"
	"github.com/rabbitkit/rabbitkit/journal"
	"github.com/rabbitkit/rabbitkit/protocol"
)

// The limits (internal/amqpwire) are those a message must meet to be publishable at all. A
// message that breaks one can never be sent: amqp091-go refuses to encode a short string over
// 255 bytes and closes the connection, RabbitMQ closes the connection for a header frame larger
// than frame_max (501 FRAME_ERROR) and the channel for a bad expiration or delivery mode (406).
// Journaled, such a message would be resent after every reconnect and hold every message behind
// it, forever. Publish therefore refuses it with ErrInvalidMessage, and the sender parks any such
// entry it finds in the journal (written by an older version, or through the journal API) before
// sending it.
//
// checkWire reports why entry e can never be published, or nil. msgID is the message-id it will
// carry ("" means the default, which protocol.Stamp.MessageID keeps within 255 bytes); source is
// the publisher's source (for the size of the stamp); frameMax is the connection's frame size.
func checkWire(e *journal.Entry, msgID, source string, frameMax int) error {
	if len(e.Exchange) > amqpwire.MaxShortString {
		return fmt.Errorf("exchange name is %d bytes; AMQP allows %d", len(e.Exchange), amqpwire.MaxShortString)
	}
	if len(e.RoutingKey) > amqpwire.MaxShortString {
		return fmt.Errorf("routing key is %d bytes; AMQP allows %d", len(e.RoutingKey), amqpwire.MaxShortString)
	}
	pr := &e.Properties
	size := amqpwire.HeaderFrameFixed + 1 + 1 + 8 // delivery mode, priority, timestamp
	for _, f := range [...]struct{ name, v string }{
		{"ContentType", pr.ContentType}, {"ContentEncoding", pr.ContentEncoding},
		{"CorrelationID", pr.CorrelationID}, {"ReplyTo", pr.ReplyTo}, {"Expiration", pr.Expiration},
		{"MessageID", msgID}, {"Type", pr.Type}, {"UserID", pr.UserID}, {"AppID", pr.AppID},
	} {
		if len(f.v) > amqpwire.MaxShortString {
			return fmt.Errorf("%s is %d bytes; AMQP allows %d", f.name, len(f.v), amqpwire.MaxShortString)
		}
		size += 1 + len(f.v)
	}
	if msgID == "" {
		size += amqpwire.MaxShortString
	}
	if err := amqpwire.CheckExpiration(pr.Expiration); err != nil {
		return err
	}
	if pr.DeliveryMode > 2 {
		return fmt.Errorf("DeliveryMode %d: RabbitMQ accepts 1 (transient) and 2 (persistent)", pr.DeliveryMode)
	}
	// The headers table: the caller's headers and the four rk- headers (long strings and int64s).
	hs, err := amqpwire.TableSize(e.Headers)
	if err != nil {
		return err
	}
	stamp := 4 + (1 + len(protocol.HeaderSource) + 1 + 4 + len(source)) + (1 + len(protocol.HeaderEpoch) + 1 + 8) +
		(1 + len(protocol.HeaderStream) + 1 + 4 + len(e.Stream)) + (1 + len(protocol.HeaderSeq) + 1 + 8)
	size += hs + stamp
	if frameMax <= 0 {
		frameMax = amqpwire.DefaultFrameMax
	}
	if size > frameMax {
		return fmt.Errorf("headers and properties take about %d bytes; they must fit in one AMQP frame of %d bytes (frame_max): send large data in the body", size, frameMax)
	}
	return nil
}
