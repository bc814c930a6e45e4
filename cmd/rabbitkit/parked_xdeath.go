package main

// Messages in the parking queue that the broker dead-lettered there: a quorum queue declared by
// topology dead-letters to <queue>.parked past its x-delivery-limit (and on a reject without
// requeue, a TTL, a length limit). They carry no rk-park-* headers but the broker's x-death: the
// queue, exchange and routing keys they died from, why, and when.

import (
	"strings"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/rabbitkit/rabbitkit/protocol"
)

// death is the newest x-death entry of a dead-lettered message (RabbitMQ puts it first).
type death struct {
	Reason      string // delivery_limit, rejected, expired, maxlen
	Queue       string
	Exchange    string
	RoutingKey  string // the first of its routing-keys
	Time        *time.Time
	Count       int64
	OriginalExp string // original-expiration: the per-message TTL the broker removed
}

// deadLettered returns the message's newest x-death entry, when it was dead-lettered by the broker
// and not parked by the consumer (a parked copy's rk-park-* headers win).
func deadLettered(d *amqp.Delivery) (death, bool) {
	if _, parked := d.Headers[protocol.HeaderParkExchange]; parked {
		return death{}, false
	}
	ds, _ := d.Headers["x-death"].([]any)
	if len(ds) == 0 {
		return death{}, false
	}
	e, ok := ds[0].(amqp.Table)
	if !ok {
		return death{}, false
	}
	str := func(k string) string { s, _ := e[k].(string); return s }
	x := death{Reason: str("reason"), Queue: str("queue"), Exchange: str("exchange"), OriginalExp: str("original-expiration")}
	if rks, _ := e["routing-keys"].([]any); len(rks) > 0 {
		x.RoutingKey, _ = rks[0].(string)
	}
	if t, ok := e["time"].(time.Time); ok {
		t = t.UTC()
		x.Time = &t
	}
	switch c := e["count"].(type) {
	case int64:
		x.Count = c
	case int32:
		x.Count = int64(c)
	}
	return x, true
}

// deathReasons explains x-death reasons.
var deathReasons = map[string]string{
	"delivery_limit": "returned to the queue more often than its x-delivery-limit (consumer crashes or nacks with requeue)",
	"rejected":       "rejected or nacked without requeue",
	"expired":        "its TTL expired",
	"maxlen":         "the queue's length limit",
}

// fromDeath fills what list and show print for a dead-lettered message.
func (p *parkedOut) fromDeath(x death) {
	p.DeathReason = x.Reason
	p.Reason = "dead-lettered by the broker (x-death): " + x.Reason
	if why := deathReasons[x.Reason]; why != "" {
		p.Reason += ": " + why
	}
	p.Queue, p.Exchange, p.RoutingKey, p.ParkedAt = x.Queue, x.Exchange, x.RoutingKey, x.Time
}

// deathHeader reports the headers the broker adds when it dead-letters a message.
func deathHeader(k string) bool {
	return k == "x-death" || strings.HasPrefix(k, "x-first-death-") || strings.HasPrefix(k, "x-last-death-")
}

// stripDeath removes a dead-lettered message's x-death headers from h (its re-driven copy goes out
// as first published; the broker adds them again if it dies again) and returns the expiration the
// broker removed. For a message parked by the consumer it changes nothing.
func stripDeath(d *amqp.Delivery, h amqp.Table) (expiration string) {
	x, ok := deadLettered(d)
	if !ok {
		return ""
	}
	for k := range h {
		if deathHeader(k) {
			delete(h, k)
		}
	}
	return x.OriginalExp
}
