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
// checkWire reports why entry e can never be published, or nil. msgID is the message-id the caller
// set ("" means the default, which protocol.Stamp.MessageID keeps within 255 bytes); source is the
// publisher's source (for the size of the stamp); frameMax is the connection's frame size. The
// header frame's size is counted as amqp091-go encodes it: absent properties take no room.
func checkWire(e *journal.Entry, msgID, source string, frameMax int) error {
	if len(e.Exchange) > amqpwire.MaxShortString {
		return fmt.Errorf("exchange name is %d bytes; AMQP allows %d", len(e.Exchange), amqpwire.MaxShortString)
	}
	if len(e.RoutingKey) > amqpwire.MaxShortString {
		return fmt.Errorf("routing key is %d bytes; AMQP allows %d", len(e.RoutingKey), amqpwire.MaxShortString)
	}
	pr := &e.Properties
	size := amqpwire.HeaderFrameFixed
	for _, f := range [...]struct{ name, v string }{
		{"ContentType", pr.ContentType}, {"ContentEncoding", pr.ContentEncoding},
		{"CorrelationID", pr.CorrelationID}, {"ReplyTo", pr.ReplyTo}, {"Expiration", pr.Expiration},
		{"MessageID", msgID}, {"Type", pr.Type}, {"UserID", pr.UserID}, {"AppID", pr.AppID},
	} {
		if len(f.v) > amqpwire.MaxShortString {
			return fmt.Errorf("%s is %d bytes; AMQP allows %d", f.name, len(f.v), amqpwire.MaxShortString)
		}
		if f.v != "" {
			size += 1 + len(f.v)
		}
	}
	if msgID == "" { // the default: "<source>/<epoch>/<stream>/<seq>", at most 19 digits each number
		n := len(source) + len(e.Stream) + 3 + 19 + 19
		if n > amqpwire.MaxShortString {
			n = protocol.MaxCutMessageID
		}
		size += 1 + n
	}
	if pr.DeliveryMode != 0 {
		size++
	}
	if pr.Priority != 0 {
		size++
	}
	if !pr.Timestamp.IsZero() {
		size += 8
	}
	if err := amqpwire.CheckExpiration(pr.Expiration); err != nil {
		return err
	}
	if pr.DeliveryMode > 2 {
		return fmt.Errorf("DeliveryMode %d: RabbitMQ accepts 1 (transient) and 2 (persistent)", pr.DeliveryMode)
	}
	// The headers table (its length counted once, by TableSize): the caller's headers and the four
	// rk- headers (long strings and int64s).
	hs, err := amqpwire.TableSize(e.Headers)
	if err != nil {
		return err
	}
	stamp := (1 + len(protocol.HeaderSource) + 1 + 4 + len(source)) + (1 + len(protocol.HeaderEpoch) + 1 + 8) +
		(1 + len(protocol.HeaderStream) + 1 + 4 + len(e.Stream)) + (1 + len(protocol.HeaderSeq) + 1 + 8)
	size += hs + stamp
	if frameMax <= 0 {
		frameMax = amqpwire.DefaultFrameMax
	}
	if size > frameMax {
		// With a caller-set message-id the count is exact (TestWireSizeExact pins it to the
		// broker's frame_too_large); with the default one it allows for 19-digit numbers.
		return fmt.Errorf("headers and properties take %d bytes; they must fit in one AMQP frame of %d bytes (frame_max): send large data in the body", size, frameMax)
	}
	return nil
}
