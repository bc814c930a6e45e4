package protocol_test

import (
	"errors"
	"fmt"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/rabbitkit/rabbitkit/protocol"
)

func Example() {
	// A publisher in any language stamps each message with four headers...
	s := protocol.Stamp{Source: "orders-api", Epoch: 8151, Stream: protocol.DefaultStream("orders", "created"), Seq: 1}
	headers := s.Apply(amqp.Table{"trace-id": "abc"})

	// ...and a consumer reads them back to deduplicate and detect gaps.
	got, err := protocol.Decode(headers)
	fmt.Println(got, err)

	_, err = protocol.Decode(amqp.Table{"trace-id": "abc"})
	fmt.Println(errors.Is(err, protocol.ErrNoStamp))

	_, err = protocol.Decode(amqp.Table{protocol.HeaderSource: "x", protocol.HeaderEpoch: int64(1), protocol.HeaderStream: "s", protocol.HeaderSeq: int64(-4)})
	fmt.Println(err)
	// Output:
	// orders-api/8151/orders/created/1 <nil>
	// true
	// protocol: malformed rk- headers: rk-seq is -4, want >= 1
}
