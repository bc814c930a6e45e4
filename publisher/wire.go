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
// checkWire reports why entry e can never be published, or nil. stampLen is the length of its
// stamp's v2 form (exact in the sender; in Publish, before a seq is assigned, with a 19-digit seq),
// which travels as message-id or, when the caller set one, as the rk-stamp header. frameMax is the
// connection's frame size. The header frame's size is counted as amqp091-go encodes it: absent
// properties take no room, and without caller headers and message-id there is no headers table.
func checkWire(e *journal.Entry, stampLen, frameMax int) error {
	if len(e.Exchange) > amqpwire.MaxShortString {
		return fmt.Errorf("exchange name is %d bytes; AMQP allows %d", len(e.Exchange), amqpwire.MaxShortString)
	}
	if len(e.RoutingKey) > amqpwire.MaxShortString {
		return fmt.Errorf("routing key is %d bytes; AMQP allows %d", len(e.RoutingKey), amqpwire.MaxShortString)
	}
	if err := protocol.CheckStream(e.Stream); err != nil {
		return err
	}
	pr := &e.Properties
	if protocol.LooksLikeStamp(pr.MessageID) {
		return fmt.Errorf("MessageID %.40q starts like a rabbitkit stamp (rk<digits>:); such message-ids are reserved", pr.MessageID)
	}
	for k := range e.Headers {
		if len(k) >= 3 && k[:3] == "rk-" {
			return fmt.Errorf("header %q: names starting with rk- are reserved for the wire contract", k)
		}
	}
	size := amqpwire.HeaderFrameFixed
	for _, f := range [...]struct{ name, v string }{
		{"ContentType", pr.ContentType}, {"ContentEncoding", pr.ContentEncoding},
		{"CorrelationID", pr.CorrelationID}, {"ReplyTo", pr.ReplyTo}, {"Expiration", pr.Expiration},
		{"MessageID", pr.MessageID}, {"Type", pr.Type}, {"UserID", pr.UserID}, {"AppID", pr.AppID},
	} {
		if len(f.v) > amqpwire.MaxShortString {
			return fmt.Errorf("%s is %d bytes; AMQP allows %d", f.name, len(f.v), amqpwire.MaxShortString)
		}
		if f.v != "" {
			size += 1 + len(f.v)
		}
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
	// The stamp: the message-id, or a long string in the headers table.
	hs := 0
	if len(e.Headers) > 0 || pr.MessageID != "" {
		var err error
		if hs, err = amqpwire.TableSize(e.Headers); err != nil { // its length counted once
			return err
		}
	}
	if pr.MessageID == "" {
		size += 1 + stampLen
	} else {
		size += 1 + len(protocol.HeaderStamp) + 1 + 4 + stampLen
	}
	size += hs
	if frameMax <= 0 {
		frameMax = amqpwire.DefaultFrameMax
	}
	if size > frameMax {
		// In the sender the count is exact (TestWireSizeExact pins it to the broker's
		// frame_too_large); in Publish it allows for a 19-digit seq.
		return fmt.Errorf("headers and properties take %d bytes; they must fit in one AMQP frame of %d bytes (frame_max): send large data in the body", size, frameMax)
	}
	return nil
}
