package publisher

import (
	"fmt"
	"strconv"
	"time"

	"github.com/rabbitkit/rabbitkit/journal"
	"github.com/rabbitkit/rabbitkit/protocol"
)

// Limits of the AMQP 0-9-1 wire and of RabbitMQ that a message must meet to be publishable at all.
// A message that breaks one can never be sent: amqp091-go refuses to encode a short string over
// 255 bytes and closes the connection, RabbitMQ closes the connection for a header frame larger
// than frame_max (501 FRAME_ERROR) and the channel for a bad expiration or delivery mode (406).
// Journaled, such a message would be resent after every reconnect and hold every message behind
// it, forever. Publish therefore refuses it with ErrInvalidMessage, and the sender parks any such
// entry it finds in the journal (written by an older version, or through the journal API) before
// sending it.
const (
	// maxShortString is the AMQP short string limit: exchange, routing key, the string properties
	// and header keys.
	maxShortString = 255
	// maxExpiration is RabbitMQ's largest per-message TTL in milliseconds (10 years); larger
	// values are refused with 406 "value_too_large".
	maxExpiration = 315_360_000_000
	// defaultFrameMax is the frame size amqp091-go asks for and RabbitMQ's default frame_max.
	// Publish checks against it; the sender checks against what the connection negotiated.
	defaultFrameMax = 128 << 10
	// headerFrameFixed is the content header frame's frame overhead (8) plus its fixed fields
	// (class, weight, body size, property flags: 14).
	headerFrameFixed = 8 + 14
)

// checkWire reports why entry e can never be published, or nil. msgID is the message-id it will
// carry ("" means the default, which protocol.Stamp.MessageID keeps within 255 bytes); source is
// the publisher's source (for the size of the stamp); frameMax is the connection's frame size.
func checkWire(e *journal.Entry, msgID, source string, frameMax int) error {
	if len(e.Exchange) > maxShortString {
		return fmt.Errorf("exchange name is %d bytes; AMQP allows %d", len(e.Exchange), maxShortString)
	}
	if len(e.RoutingKey) > maxShortString {
		return fmt.Errorf("routing key is %d bytes; AMQP allows %d", len(e.RoutingKey), maxShortString)
	}
	pr := &e.Properties
	size := headerFrameFixed + 1 + 1 + 8 // delivery mode, priority, timestamp
	for _, f := range [...]struct{ name, v string }{
		{"ContentType", pr.ContentType}, {"ContentEncoding", pr.ContentEncoding},
		{"CorrelationID", pr.CorrelationID}, {"ReplyTo", pr.ReplyTo}, {"Expiration", pr.Expiration},
		{"MessageID", msgID}, {"Type", pr.Type}, {"UserID", pr.UserID}, {"AppID", pr.AppID},
	} {
		if len(f.v) > maxShortString {
			return fmt.Errorf("%s is %d bytes; AMQP allows %d", f.name, len(f.v), maxShortString)
		}
		size += 1 + len(f.v)
	}
	if msgID == "" {
		size += maxShortString
	}
	if err := checkExpiration(pr.Expiration); err != nil {
		return err
	}
	if pr.DeliveryMode > 2 {
		return fmt.Errorf("DeliveryMode %d: RabbitMQ accepts 1 (transient) and 2 (persistent)", pr.DeliveryMode)
	}
	// The headers table: the caller's headers and the four rk- headers (long strings and int64s).
	hs, err := tableSize(e.Headers, 0)
	if err != nil {
		return err
	}
	stamp := 4 + (1 + len(protocol.HeaderSource) + 1 + 4 + len(source)) + (1 + len(protocol.HeaderEpoch) + 1 + 8) +
		(1 + len(protocol.HeaderStream) + 1 + 4 + len(e.Stream)) + (1 + len(protocol.HeaderSeq) + 1 + 8)
	size += hs + stamp
	if frameMax <= 0 {
		frameMax = defaultFrameMax
	}
	if size > frameMax {
		return fmt.Errorf("headers and properties take about %d bytes; they must fit in one AMQP frame of %d bytes (frame_max): send large data in the body", size, frameMax)
	}
	return nil
}

// checkExpiration accepts what RabbitMQ accepts: empty, or an optional '+' and ASCII digits whose
// value is at most maxExpiration milliseconds.
func checkExpiration(x string) error {
	if x == "" {
		return nil
	}
	d := x
	if d[0] == '+' {
		d = d[1:]
	}
	bad := d == ""
	for i := 0; i < len(d) && !bad; i++ {
		bad = d[i] < '0' || d[i] > '9'
	}
	if bad {
		return fmt.Errorf("expiration %q: RabbitMQ wants a TTL in milliseconds, a decimal integer such as \"60000\"", x)
	}
	if n, err := strconv.ParseUint(d, 10, 64); err != nil || n > maxExpiration {
		return fmt.Errorf("expiration %q: RabbitMQ allows at most %d ms (10 years)", x, int64(maxExpiration))
	}
	return nil
}

// tableSize is the encoded size of an AMQP field table holding t (journal header types), after its
// 4-byte length. It fails for a key longer than a short string.
func tableSize(t map[string]any, depth int) (int, error) {
	n := 4
	for k, v := range t {
		if len(k) > maxShortString {
			return 0, fmt.Errorf("header key %.40q... is %d bytes; AMQP allows %d", k, len(k), maxShortString)
		}
		vs, err := valueSize(v, depth)
		if err != nil {
			return 0, err
		}
		n += 1 + len(k) + 1 + vs
	}
	return n, nil
}

func valueSize(v any, depth int) (int, error) {
	if depth > 64 {
		return 0, fmt.Errorf("headers nested deeper than 64")
	}
	switch x := v.(type) {
	case nil:
		return 0, nil
	case bool, int8, uint8:
		return 1, nil
	case int16, uint16:
		return 2, nil
	case int32, uint32, float32:
		return 4, nil
	case string:
		return 4 + len(x), nil
	case []byte:
		return 4 + len(x), nil
	case map[string]any:
		return tableSize(x, depth+1)
	case []any:
		n := 4
		for _, e := range x {
			s, err := valueSize(e, depth+1)
			if err != nil {
				return 0, err
			}
			n += 1 + s
		}
		return n, nil
	case time.Time:
		return 8, nil
	default: // int, int64, float64, and anything wider
		return 8, nil
	}
}
