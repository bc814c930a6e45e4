package consumer

import (
	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/rabbitkit/rabbitkit/internal/amqpwire"
	"github.com/rabbitkit/rabbitkit/props"
	"github.com/rabbitkit/rabbitkit/protocol"
)

// Properties are the AMQP basic properties of a delivered message (the kit's one properties
// type, props.Properties, also journal.Properties).
type Properties = props.Properties

// Message is what a handler sees. The handler must not modify it, nor keep it (or its Body,
// Headers) after returning: a parked message is published from the same data.
type Message struct {
	Body       []byte
	Headers    amqp.Table
	Properties Properties
	Exchange   string // the exchange it was published to
	RoutingKey string
	// Stamp is the decoded stamp (docs/PROTOCOL.md: v2 in message-id or rk-stamp, or v1's rk-
	// headers). It is zero when Stamped is false (a message without a stamp passed through by
	// NoStampPassThrough: no dedup, no order guarantee). Properties.MessageID is as delivered:
	// the stamp itself when the publisher had no message-id of its own.
	Stamp   protocol.Stamp
	Stamped bool
	// Redelivered is the broker's flag: the message was delivered before (to this or another
	// consumer) and not acked. Dedup makes that harmless; it is informational.
	Redelivered bool
	// Attempt counts handler attempts for this delivery, from 1.
	Attempt int
	// Redriven is set for a copy an operator re-drove from the parking queue
	// (protocol.HeaderRedrive) whose stamp the store remembered as parked after its handler had
	// failed: it is applied once, out of its stream's order (later messages went on without it).
	Redriven bool
}

func newMessage(d *amqp.Delivery, s protocol.Stamp, stamped bool, attempt int) *Message {
	return &Message{
		Body:        d.Body,
		Headers:     d.Headers,
		Properties:  amqpwire.FromDelivery(d),
		Exchange:    d.Exchange,
		RoutingKey:  d.RoutingKey,
		Stamp:       s,
		Stamped:     stamped,
		Redelivered: d.Redelivered,
		Attempt:     attempt,
	}
}
