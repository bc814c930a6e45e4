// Package amqpwire holds the limits of the AMQP 0-9-1 wire and of RabbitMQ that a message must meet
// to be publishable at all, shared by the publisher (which refuses or parks what breaks them) and
// the consumer's parker (which must always be able to park).
package amqpwire

import (
	"fmt"
	"math"
	"strconv"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/rabbitkit/rabbitkit/props"
)

const (
	// MaxShortString is the AMQP short string limit: exchange, routing key, the string properties
	// and header keys. amqp091-go refuses to encode a longer one and closes the connection.
	MaxShortString = 255
	// MaxExpiration is RabbitMQ's largest per-message TTL in milliseconds (10 years); larger
	// values are refused with 406 "value_too_large" (probed on RabbitMQ 3.10.8).
	MaxExpiration = 315_360_000_000
	// DefaultFrameMax is the frame size amqp091-go asks for and RabbitMQ's default frame_max. A
	// content header frame (properties and headers) larger than the connection's frame size makes
	// RabbitMQ close the connection (501 FRAME_ERROR).
	DefaultFrameMax = 128 << 10
	// HeaderFrameFixed is a content header frame's frame overhead (8) plus its fixed fields
	// (class, weight, body size, property flags: 14).
	HeaderFrameFixed = 8 + 14
)

// CheckExpiration accepts what RabbitMQ accepts: empty, or an optional sign and ASCII digits whose
// value is between 0 and MaxExpiration milliseconds ("+5" and "-0" pass, "-1" does not).
func CheckExpiration(x string) error {
	if x == "" {
		return nil
	}
	d, neg := x, false
	switch d[0] {
	case '+':
		d = d[1:]
	case '-':
		d, neg = d[1:], true
	}
	bad := d == ""
	for i := 0; i < len(d) && !bad; i++ {
		bad = d[i] < '0' || d[i] > '9'
	}
	if bad {
		return fmt.Errorf("expiration %q: RabbitMQ wants a TTL in milliseconds, a decimal integer such as \"60000\"", x)
	}
	n, err := strconv.ParseUint(d, 10, 64)
	if neg && n != 0 {
		return fmt.Errorf("expiration %q: a TTL cannot be negative", x)
	}
	if err != nil || n > MaxExpiration {
		return fmt.Errorf("expiration %q: RabbitMQ allows at most %d ms (10 years)", x, int64(MaxExpiration))
	}
	return nil
}

// TableSize is the size amqp091-go (v1.16) encodes a field table holding t to, its 4-byte length
// included. t may hold journal header types or amqp.Table values (nested amqp.Table too). It fails
// where amqp091-go would fail or silently change the value: a key longer than a short string, a
// type it cannot encode, an int outside the 32-bit range (amqp091-go writes int as a 32-bit 'I'
// and would truncate it).
func TableSize(t map[string]any) (int, error) { return tableSize(t, 0) }

func tableSize(t map[string]any, depth int) (int, error) {
	n := 4
	for k, v := range t {
		if len(k) > MaxShortString {
			return 0, fmt.Errorf("header key %.40q... is %d bytes; AMQP allows %d", k, len(k), MaxShortString)
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
	case int:
		if x < math.MinInt32 || x > math.MaxInt32 {
			return 0, fmt.Errorf("header value %d: amqp091-go sends a Go int as a 32-bit integer and would truncate it; use int64", x)
		}
		return 4, nil
	case int64, float64, time.Time:
		return 8, nil
	case amqp.Decimal:
		return 5, nil
	case string:
		return 4 + len(x), nil
	case []byte:
		return 4 + len(x), nil
	case map[string]any:
		return tableSize(x, depth+1)
	case amqp.Table:
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
	default:
		return 0, fmt.Errorf("header value of type %T cannot be sent in an AMQP field table", v)
	}
}

// FromDelivery returns a delivery's basic properties.
func FromDelivery(d *amqp.Delivery) props.Properties {
	return props.Properties{
		ContentType: d.ContentType, ContentEncoding: d.ContentEncoding, DeliveryMode: d.DeliveryMode,
		Priority: d.Priority, CorrelationID: d.CorrelationId, ReplyTo: d.ReplyTo, Expiration: d.Expiration,
		MessageID: d.MessageId, Timestamp: d.Timestamp, Type: d.Type, UserID: d.UserId, AppID: d.AppId,
	}
}

// Publishing returns the message of p's properties, headers h and body.
func Publishing(p *props.Properties, h amqp.Table, body []byte) amqp.Publishing {
	return amqp.Publishing{
		Headers: h, ContentType: p.ContentType, ContentEncoding: p.ContentEncoding, DeliveryMode: p.DeliveryMode,
		Priority: p.Priority, CorrelationId: p.CorrelationID, ReplyTo: p.ReplyTo, Expiration: p.Expiration,
		MessageId: p.MessageID, Timestamp: p.Timestamp, Type: p.Type, UserId: p.UserID, AppId: p.AppID, Body: body,
	}
}
