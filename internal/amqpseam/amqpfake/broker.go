package amqpfake

// The broker's side of a channel: what the test sends and reads.

import (
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/rabbitkit/rabbitkit/topology"
)

// ConfirmPublish acks (or nacks) publish tag, and with multiple every tag from from on, like a
// broker's multiple confirm that amqp091-go expands into one Confirmation per tag.
func (ch *Channel) ConfirmPublish(tag uint64, multiple, ack bool, from uint64) {
	first := tag
	if multiple {
		first = from
	}
	ch.mu.Lock()
	defer ch.mu.Unlock()
	if ch.dead {
		return
	}
	for t := first; t <= tag; t++ {
		ch.conf <- amqp.Confirmation{DeliveryTag: t, Ack: ack}
	}
}

// ReturnPublish sends p back as unroutable (312 NO_ROUTE); confirm it after.
func (ch *Channel) ReturnPublish(p Pub) {
	ch.mu.Lock()
	defer ch.mu.Unlock()
	if ch.dead {
		return
	}
	r := amqp.Return{ReplyCode: amqp.NoRoute, ReplyText: "NO_ROUTE", Exchange: p.Exchange, RoutingKey: p.Key,
		Headers: p.Msg.Headers, MessageId: p.Msg.MessageId, Body: p.Msg.Body}
	for _, l := range ch.rets {
		l <- r
	}
}

// Deliver sends d to the channel's consumer with the next delivery tag, which it returns (0 when
// the channel is closed or has no consumer).
func (ch *Channel) Deliver(d amqp.Delivery) uint64 {
	ch.mu.Lock()
	defer ch.mu.Unlock()
	if ch.dead || ch.dels == nil || ch.cancelled {
		return 0
	}
	ch.delTag++
	d.DeliveryTag, d.ConsumerTag = ch.delTag, ch.ctag
	ch.dels <- d
	return ch.delTag
}

// CancelConsumer sends the broker's basic.cancel of the channel's consumer (the queue was deleted).
func (ch *Channel) CancelConsumer() {
	ch.mu.Lock()
	defer ch.mu.Unlock()
	if ch.dead || ch.cancelled {
		return
	}
	for _, l := range ch.cancels {
		l <- ch.ctag
	}
}

// Pubs yields the channel's publishes, in order.
func (ch *Channel) Pubs() <-chan Pub { return ch.pubs }

// Settles yields the channel's acks and nacks, in order.
func (ch *Channel) Settles() <-chan Settle { return ch.settles }

// NextPub returns the next publish, failing t after d.
func (ch *Channel) NextPub(t testing.TB, d time.Duration) Pub {
	t.Helper()
	return recv(t, ch.pubs, d, "publish")
}

// NoPub fails t if anything is published within d.
func (ch *Channel) NoPub(t testing.TB, d time.Duration) {
	t.Helper()
	select {
	case p := <-ch.pubs:
		t.Fatalf("amqpfake: unexpected publish %s (tag %d)", p.Stamp, p.Tag)
	case <-time.After(d):
	}
}

// NextSettle returns the next ack or nack, failing t after d.
func (ch *Channel) NextSettle(t testing.TB, d time.Duration) Settle {
	t.Helper()
	return recv(t, ch.settles, d, "ack or nack")
}

// Consumer reports the channel's consumer: its tag, whether it is exclusive, and whether it was
// cancelled by the client.
func (ch *Channel) Consumer() (tag string, exclusive, cancelled bool) {
	ch.mu.Lock()
	defer ch.mu.Unlock()
	return ch.ctag, ch.exclusive, ch.cancelled
}

// Prefetch is the channel's basic.qos prefetch count.
func (ch *Channel) Prefetch() int {
	ch.mu.Lock()
	defer ch.mu.Unlock()
	return ch.prefetch
}

// Declared is the topology declared on the channel.
func (ch *Channel) Declared() topology.Topology {
	ch.mu.Lock()
	defer ch.mu.Unlock()
	return ch.declared
}
