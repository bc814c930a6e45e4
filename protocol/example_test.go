package protocol_test

import (
	"errors"
	"fmt"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/rabbitkit/rabbitkit/protocol"
)

func Example() {
	// A publisher in any language stamps each message with one string in its message-id...
	s := protocol.Stamp{Source: "orders-api", Epoch: 8151, Stream: protocol.DefaultStream("orders", "created"), Seq: 1}
	id, err := s.MessageID()
	fmt.Println(id, err)

	// ...and a consumer reads it back to deduplicate and detect gaps.
	got, version, err := protocol.Decode(id, nil)
	fmt.Println(got.Source, got.Epoch, got.Stream, got.Seq, version, err)

	// An application that sets its own message-id keeps it; the stamp moves to the rk-stamp header.
	got, _, err = protocol.Decode("order-17", amqp.Table{protocol.HeaderStamp: id})
	fmt.Println(got == s, err)

	_, _, err = protocol.Decode("6f1c2a9e-1d3b-4c6a-9a53-0f6c2b5e8d41", nil)
	fmt.Println(errors.Is(err, protocol.ErrNoStamp))

	_, _, err = protocol.Decode("rk2:orders-api:8151:orders/created:-4", nil)
	fmt.Println(err)
	// Output:
	// rk2:orders-api:8151:orders/created:1 <nil>
	// orders-api 8151 orders/created 1 2 <nil>
	// true <nil>
	// true
	// protocol: malformed stamp: seq "-4" is not a decimal number (byte 0) (in message-id)
}
