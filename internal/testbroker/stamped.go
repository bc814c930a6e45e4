package testbroker

import (
	"testing"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/rabbitkit/rabbitkit/protocol"
)

// PublishStamped publishes n persistent messages with body to exchange on ch (in confirm mode),
// the i-th stamped (contract v2, in the message-id) with source "bench", epoch 1 and the stream
// and seq stampOf(i) returns, routed with keyOf(stream); confirmed in windows of 512, as a careful
// raw publisher would. It fails tb on any error or nack. Benchmarks fill their queues with it.
func PublishStamped(tb testing.TB, ch *amqp.Channel, exchange string, keyOf func(stream string) string, n int, body []byte, stampOf func(i int) (string, int64)) {
	tb.Helper()
	var window []*amqp.DeferredConfirmation
	for i := range n {
		stream, seq := stampOf(i)
		s := protocol.Stamp{Source: "bench", Epoch: 1, Stream: stream, Seq: seq}
		dc, err := ch.PublishWithDeferredConfirm(exchange, keyOf(stream), false, false, amqp.Publishing{MessageId: s.String(), DeliveryMode: amqp.Persistent, Body: body})
		if err != nil {
			tb.Fatal(err)
		}
		window = append(window, dc)
		if len(window) == 512 || i == n-1 {
			for _, dc := range window {
				if !dc.Wait() {
					tb.Fatal("fill: publish not confirmed")
				}
			}
			window = window[:0]
		}
	}
}
