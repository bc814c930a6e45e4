// Package props holds a message's AMQP basic properties as one plain struct, the same type for
// what the journal stores (journal.Properties), what the publisher sends and what the consumer
// hands a handler (consumer.Properties): both are aliases of Properties. It imports nothing of
// AMQP, so journal/ stays free of the client library; internal/amqpwire converts to and from
// amqp091-go's Delivery and Publishing.
package props

import "time"

// Properties are the AMQP basic properties of a message, except its headers (kept beside it:
// journal.Entry.Headers, consumer.Message.Headers).
type Properties struct {
	ContentType     string
	ContentEncoding string
	DeliveryMode    uint8 // 1 = transient, 2 = persistent
	Priority        uint8
	CorrelationID   string
	ReplyTo         string
	Expiration      string // a per-message TTL in milliseconds, as a decimal string
	MessageID       string
	Timestamp       time.Time // zero = not set
	Type            string
	UserID          string // validated by RabbitMQ against the connection's user when set
	AppID           string
}
