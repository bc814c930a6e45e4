package testbroker

import (
	"context"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
)

// PublishPipelined is the raw baseline of the publish benchmarks: plain amqp091-go publishing n
// messages (msg(i), persistent, mandatory) to queue through the default exchange, with at most
// window unconfirmed, waiting for every confirm. It returns the rate in messages per second and
// fails tb on a nack or an error.
func PublishPipelined(tb testing.TB, url, queue string, n, window int, msg func(i int) amqp.Publishing) float64 {
	tb.Helper()
	c, err := amqp.Dial(url)
	if err != nil {
		tb.Fatal(err)
	}
	defer c.Close()
	ch, err := c.Channel()
	if err != nil {
		tb.Fatal(err)
	}
	if err := ch.Confirm(false); err != nil {
		tb.Fatal(err)
	}
	ctx := context.Background()
	pending := make([]*amqp.DeferredConfirmation, 0, window)
	start := time.Now()
	for i := range n {
		if len(pending) == window {
			if !pending[0].Wait() {
				tb.Fatal("raw: nack")
			}
			pending = pending[1:]
		}
		m := msg(i)
		m.DeliveryMode = amqp.Persistent
		dc, err := ch.PublishWithDeferredConfirmWithContext(ctx, "", queue, true, false, m)
		if err != nil {
			tb.Fatal(err)
		}
		pending = append(pending, dc)
	}
	for _, dc := range pending {
		if !dc.Wait() {
			tb.Fatal("raw: nack")
		}
	}
	return float64(n) / time.Since(start).Seconds()
}
