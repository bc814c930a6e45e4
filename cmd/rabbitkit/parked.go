package main

// The parked subcommand: the consumer's parking queue (<queue>.parked): list what is there and
// why, show one message, re-drive messages to where they were first published.
//
// Reading loses nothing: every message is taken with basic.get without auto-ack and held unacked
// until the end, then the channel is closed, which requeues the unacked ones at their place (they
// come back marked redelivered). A re-drive publishes a copy, with publisher confirms, and acks the
// parked copy only once the broker confirmed the copy as routed.

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"strconv"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
)

const parkedUsage = `Usage:
  rabbitkit parked [-json] list QUEUE -url URL                the parked messages of QUEUE, in queue order
  rabbitkit parked [-json] show QUEUE -url URL INDEX          one, with its headers and body
  rabbitkit parked redrive QUEUE -url URL INDEX... | all      publish them again, then remove them
  rabbitkit parked redrive QUEUE -url URL -id MESSAGE-ID      the same, named by message-id

QUEUE is the consumer's queue; its parking queue is QUEUE.parked (or -parking NAME). INDEX is a
message's position in list (1 is the head). A re-drive publishes to the exchange and routing key the
message was first published to (rk-park-exchange, rk-park-routing-key), with its body, properties,
headers and stamp unchanged, the park headers removed, an rk-redrive header added and its
expiration restored (not its user-id: the broker refuses another user's); it waits for the
publisher confirm and only then acks the parked copy. An unroutable or refused copy leaves the parked
one in place and is an error.

A message the broker dead-lettered there (a quorum queue declared by rabbitkit, past its
x-delivery-limit, or a reject, TTL or length limit) has no rk-park-* headers: list and show give the
reason, queue, exchange, routing key and time of its newest x-death entry, and redrive publishes it
to that exchange and first routing key, the x-death headers removed and its original-expiration
restored. Its stamp was never accounted for: the consumer applies it unless it had applied it.

A message the consumer parked after its handler failed is accounted for in its dedup store and
remembered there as parked: the consumer applies the re-driven copy once (rk-redrive), and drops
any further copy of that stamp as a duplicate. Re-driving twice is therefore safe.
Reading holds every parked message unacked (at most -max), then returns them to the queue in order.
`

// parkedOut is one parked message as list prints it.
type parkedOut struct {
	Index      int        `json:"index"` // 1-based position in the parking queue
	MessageID  string     `json:"message_id,omitempty"`
	Stamp      string     `json:"stamp,omitempty"`
	StampError string     `json:"stamp_error,omitempty"`
	Reason     string     `json:"reason"`
	Queue      string     `json:"queue"`
	Exchange   string     `json:"exchange"`
	RoutingKey string     `json:"routing_key"`
	ParkedAt   *time.Time `json:"parked_at,omitempty"`
	Attempts   int64      `json:"attempts"`
	BodyBytes  int        `json:"body_bytes"`
	// DeathReason is the x-death reason of a message the broker dead-lettered here (no rk-park-*
	// headers): delivery_limit, rejected, expired or maxlen.
	DeathReason string `json:"death_reason,omitempty"`
}

type parkedOpts struct {
	url, parking string
	asJSON       bool
	max          int
	ids          []string
}

// parkedMain parses the parked subcommand's command line and runs it.
func parkedMain(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	var o parkedOpts
	fs := flag.NewFlagSet("rabbitkit parked", flag.ContinueOnError)
	fs.BoolVar(&o.asJSON, "json", false, "print JSON (one object per line for list)")
	fs.StringVar(&o.url, "url", "", "AMQP URL of the broker; required")
	fs.StringVar(&o.parking, "parking", "", "the parking queue (default QUEUE.parked)")
	fs.IntVar(&o.max, "max", 10000, "read at most this many parked messages (they are all held unacked while reading)")
	fs.Func("id", "redrive: the message-id of a parked message (repeatable)", func(s string) error {
		o.ids = append(o.ids, s)
		return nil
	})
	pos, err := parseFlags(fs, parkedUsage, args, stderr)
	if err != nil {
		return err
	}
	if len(pos) < 2 || o.url == "" {
		fs.Usage()
		return usageErr("parked: want COMMAND QUEUE -url URL")
	}
	cmd, queue, rest := pos[0], pos[1], pos[2:]
	if o.parking == "" {
		o.parking = queue + ".parked"
	}
	var pick func(i int, d *amqp.Delivery) bool
	switch cmd {
	case "list":
		if len(rest) > 0 || len(o.ids) > 0 {
			return usageErr("parked list takes QUEUE only")
		}
	case "show", "redrive":
		pick, err = picker(cmd, rest, o.ids)
		if err != nil {
			return err
		}
	default:
		return usageErr("unknown command %q: list, show or redrive", cmd)
	}
	err = withParked(ctx, o, func(conn *amqp.Connection, ch *amqp.Channel, ds []amqp.Delivery) error {
		switch cmd {
		case "list":
			return listParked(stdout, ds, o.asJSON)
		case "show":
			for i := range ds {
				if pick(i, &ds[i]) {
					return showParked(stdout, i, &ds[i], o.asJSON)
				}
			}
			return fmt.Errorf("no such message in %s (%d there)", o.parking, len(ds))
		default:
			return redriveParked(ctx, stdout, conn, ch, ds, pick)
		}
	})
	if err != nil {
		return redactErr(err, o.url)
	}
	return nil
}

// picker returns which messages show or redrive act on: 1-based indexes, "all", or message-ids.
func picker(cmd string, args, ids []string) (func(int, *amqp.Delivery) bool, error) {
	switch {
	case len(ids) > 0 && len(args) > 0:
		return nil, usageErr("parked %s: name messages by INDEX or by -id, not both", cmd)
	case len(ids) > 0:
		set := map[string]bool{}
		for _, id := range ids {
			set[id] = true
		}
		return func(_ int, d *amqp.Delivery) bool { return set[d.MessageId] }, nil
	case len(args) == 1 && args[0] == "all" && cmd == "redrive":
		return func(int, *amqp.Delivery) bool { return true }, nil
	case len(args) == 0 || (cmd == "show" && len(args) > 1):
		return nil, usageErr("parked %s: name the message(s): INDEX (from list), -id MESSAGE-ID or (redrive) all", cmd)
	}
	set := map[int]bool{}
	for _, a := range args {
		n, err := strconv.Atoi(a)
		if err != nil || n < 1 {
			return nil, usageErr("%q is not an index (a position from list, 1 or more)", a)
		}
		set[n-1] = true
	}
	return func(i int, _ *amqp.Delivery) bool { return set[i] }, nil
}

// withParked takes every message of the parking queue without ack, calls fn with them, and closes
// the channel so that those fn did not ack go back to the queue in order.
func withParked(ctx context.Context, o parkedOpts, fn func(*amqp.Connection, *amqp.Channel, []amqp.Delivery) error) error {
	conn, err := amqp.DialConfig(o.url, amqp.Config{Dial: amqp.DefaultDial(10 * time.Second), Properties: amqp.Table{"connection_name": "rabbitkit parked"}})
	if err != nil {
		return fmt.Errorf("connect to %s: %w", redactURL(o.url), err)
	}
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		return fmt.Errorf("channel: %w", err)
	}
	defer ch.Close() // requeues every unacked message
	if _, err := ch.QueueDeclarePassive(o.parking, true, false, false, false, nil); err != nil {
		return fmt.Errorf("parking queue %q: %w", o.parking, err)
	}
	var ds []amqp.Delivery
	for len(ds) < o.max {
		if err := ctx.Err(); err != nil {
			return err
		}
		d, ok, err := ch.Get(o.parking, false)
		if err != nil {
			return fmt.Errorf("basic.get from %s: %w", o.parking, err)
		}
		if !ok {
			break
		}
		ds = append(ds, d)
	}
	return fn(conn, ch, ds)
}

func toParkedOut(i int, d *amqp.Delivery) parkedOut {
	str := func(k string) string { s, _ := d.Headers[k].(string); return s }
	p := parkedOut{Index: i + 1, MessageID: d.MessageId, Reason: str("rk-park-reason"), Queue: str("rk-park-queue"),
		Exchange: str("rk-park-exchange"), RoutingKey: str("rk-park-routing-key"), BodyBytes: len(d.Body)}
	if t, ok := d.Headers["rk-park-time"].(time.Time); ok {
		t = t.UTC()
		p.ParkedAt = &t
	}
	switch a := d.Headers["rk-park-attempts"].(type) {
	case int64:
		p.Attempts = a
	case int32:
		p.Attempts = int64(a)
	}
	if st, _, err := decodeStamp(d); err == nil {
		p.Stamp = st
	} else {
		p.StampError = err.Error()
	}
	if x, ok := deadLettered(d); ok {
		p.fromDeath(x)
	}
	return p
}

// errNotConfirmed is a re-drive the broker did not accept as routed.
var errNotConfirmed = errors.New("not confirmed")
