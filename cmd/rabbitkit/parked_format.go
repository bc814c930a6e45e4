package main

// The parked subcommand's output and its re-drive.

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/rabbitkit/rabbitkit/protocol"
)

// decodeStamp decodes the message's stamp (message-id or rk-* headers).
func decodeStamp(d *amqp.Delivery) (string, protocol.Version, error) {
	st, v, err := protocol.Decode(d.MessageId, d.Headers)
	if err != nil {
		return "", 0, err
	}
	return st.String(), v, nil
}

func listParked(w io.Writer, ds []amqp.Delivery, asJSON bool) error {
	if asJSON {
		enc := json.NewEncoder(w)
		for i := range ds {
			if err := enc.Encode(toParkedOut(i, &ds[i])); err != nil {
				return err
			}
		}
		return nil
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "INDEX\tSTAMP\tEXCHANGE\tROUTING KEY\tATTEMPTS\tPARKED AT\tREASON")
	for i := range ds {
		p := toParkedOut(i, &ds[i])
		stamp, at := p.Stamp, "-"
		if stamp == "" {
			stamp = "(no stamp: " + oneLine(p.StampError) + ")"
		}
		if p.ParkedAt != nil {
			at = p.ParkedAt.Format(time.RFC3339)
		}
		fmt.Fprintf(tw, "%d\t%s\t%q\t%s\t%d\t%s\t%s\n", p.Index, stamp, p.Exchange, p.RoutingKey, p.Attempts, at, oneLine(p.Reason))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	_, err := fmt.Fprintf(w, "%d parked messages\n", len(ds))
	return err
}

// parkedShown is one parked message in full, for show -json.
type parkedShown struct {
	parkedOut
	ContentType string         `json:"content_type,omitempty"`
	Headers     map[string]any `json:"headers"`
	Body        []byte         `json:"body"` // base64 in JSON
}

func showParked(w io.Writer, i int, d *amqp.Delivery, asJSON bool) error {
	p := parkedShown{parkedOut: toParkedOut(i, d), ContentType: d.ContentType, Headers: map[string]any(d.Headers), Body: d.Body}
	if p.Headers == nil {
		p.Headers = map[string]any{}
	}
	if asJSON {
		return json.NewEncoder(w).Encode(p)
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "index\t%d\n", p.Index)
	fmt.Fprintf(tw, "message-id\t%s\n", p.MessageID)
	if p.Stamp != "" {
		fmt.Fprintf(tw, "stamp\t%s\n", p.Stamp)
	} else {
		fmt.Fprintf(tw, "stamp\tnone: %s\n", oneLine(p.StampError))
	}
	fmt.Fprintf(tw, "reason\t%s\n", oneLine(p.Reason))
	fmt.Fprintf(tw, "from queue\t%s\n", p.Queue)
	fmt.Fprintf(tw, "exchange, key\t%q %q\n", p.Exchange, p.RoutingKey)
	if p.ParkedAt != nil {
		fmt.Fprintf(tw, "parked at\t%s (after %d attempts)\n", p.ParkedAt.Format(time.RFC3339), p.Attempts)
	}
	if d.ContentType != "" {
		fmt.Fprintf(tw, "content-type\t%s\n", d.ContentType)
	}
	for _, k := range slices.Sorted(maps.Keys(p.Headers)) {
		fmt.Fprintf(tw, "header\t%s = %v\n", k, p.Headers[k])
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	var err error
	if text(d.Body) {
		_, err = fmt.Fprintf(w, "body (%d bytes):\n%s\n", len(d.Body), d.Body)
	} else {
		_, err = fmt.Fprintf(w, "body (%d bytes, not text):\n%q\n", len(d.Body), d.Body)
	}
	return err
}

// original rebuilds the message as it was first published, from its parked copy.
func original(d *amqp.Delivery) amqp.Publishing {
	h := amqp.Table{}
	for k, v := range d.Headers {
		if !strings.HasPrefix(k, protocol.HeaderParkPrefix) {
			h[k] = v
		}
	}
	exp, _ := d.Headers[protocol.HeaderParkExpiration].(string)
	if dexp := stripDeath(d, h); dexp != "" {
		exp = dexp
	}
	return amqp.Publishing{
		Headers: h, ContentType: d.ContentType, ContentEncoding: d.ContentEncoding, DeliveryMode: d.DeliveryMode,
		Priority: d.Priority, CorrelationId: d.CorrelationId, ReplyTo: d.ReplyTo, Expiration: exp,
		MessageId: d.MessageId, Timestamp: d.Timestamp, Type: d.Type, AppId: d.AppId, Body: d.Body,
	}
}

// redriveParked publishes the picked messages to their original exchange and routing key, one at
// a time, each confirmed (and not returned) before its parked copy is acked on get.
func redriveParked(ctx context.Context, w io.Writer, conn *amqp.Connection, get *amqp.Channel, ds []amqp.Delivery, pick func(int, *amqp.Delivery) bool) error {
	pub, err := conn.Channel()
	if err != nil {
		return fmt.Errorf("channel: %w", err)
	}
	defer pub.Close()
	if err := pub.Confirm(false); err != nil {
		return fmt.Errorf("confirm.select: %w", err)
	}
	returns := pub.NotifyReturn(make(chan amqp.Return, 1))
	n := 0
	for i := range ds {
		d := &ds[i]
		if !pick(i, d) {
			continue
		}
		x, _ := d.Headers[protocol.HeaderParkExchange].(string)
		rk, _ := d.Headers[protocol.HeaderParkRoutingKey].(string)
		dead, isDead := deadLettered(d)
		if isDead {
			x, rk = dead.Exchange, dead.RoutingKey // x-death: where the broker took it from
		}
		if _, ok := d.Headers[protocol.HeaderParkExchange]; !ok && !isDead {
			return fmt.Errorf("message %d (%s) has no %s header: not a parked copy (%d re-driven before it)", i+1, d.MessageId, protocol.HeaderParkExchange, n)
		}
		msg := original(d)
		// The consumer applies a copy so marked once if it parked the stamp after its handler
		// failed (it had accounted for the stamp, so that resends are duplicates).
		msg.Headers[protocol.HeaderRedrive] = time.Now().UTC().Format(time.RFC3339) + " rabbitkit parked redrive"
		dc, err := pub.PublishWithDeferredConfirmWithContext(ctx, x, rk, true, false, msg)
		if err != nil {
			return fmt.Errorf("message %d: publish: %w (%d re-driven before it)", i+1, err, n)
		}
		ok, err := dc.WaitContext(ctx)
		if err != nil {
			return fmt.Errorf("message %d: waiting for the confirm: %w (%d re-driven before it; it stays parked)", i+1, err, n)
		}
		select {
		case r := <-returns:
			return fmt.Errorf("message %d: %w: returned %d %s by exchange %q, routing key %q; it stays parked (%d re-driven before it)",
				i+1, errNotConfirmed, r.ReplyCode, r.ReplyText, x, rk, n)
		default:
		}
		if !ok {
			return fmt.Errorf("message %d: %w: nacked by the broker; it stays parked (%d re-driven before it)", i+1, errNotConfirmed, n)
		}
		if err := get.Ack(d.DeliveryTag, false); err != nil {
			return fmt.Errorf("message %d: re-driven, but the ack of its parked copy failed: %w (it stays parked: remove it by hand, or the consumer drops the second copy as a duplicate)", i+1, err)
		}
		n++
	}
	if n == 0 {
		return fmt.Errorf("no such message among the %d parked", len(ds))
	}
	_, err = fmt.Fprintf(w, "re-driven %d parked messages\n", n)
	return err
}
