package integration

import (
	"context"
	"io"
	"log/slog"
	"path/filepath"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/rabbitkit/rabbitkit/consumer"
	"github.com/rabbitkit/rabbitkit/internal/testbroker"
	"github.com/rabbitkit/rabbitkit/props"
	"github.com/rabbitkit/rabbitkit/publisher"
	"github.com/rabbitkit/rabbitkit/topology"
)

// TestPropertiesEndToEnd: every basic property a caller gives publisher.Message reaches the
// handler's consumer.Message.Properties unchanged through the journal, the sender and the broker
// (props.Properties on both sides), and so do the caller's headers. The message-id the caller set
// stays the message-id (the stamp then travels in rk-stamp).
func TestPropertiesEndToEnd(t *testing.T) {
	url := testbroker.SharedURL(t)
	q := testbroker.Name(t, "props-q")
	testbroker.DeleteQueues(t, url, q, q+".parked")
	dir := t.TempDir()
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	topo := topology.Topology{Queues: []topology.Queue{{Name: q}}}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	pub, err := publisher.New(publisher.Config{URLs: []string{url}, Source: "props", JournalPath: filepath.Join(dir, "j"), Topology: topo, Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	ts := time.Unix(1_700_000_000, 0).UTC()
	msg := publisher.Message{
		RoutingKey: q, Body: []byte("body"), Headers: amqp.Table{"x-mine": "yes"},
		ContentType: "application/json", ContentEncoding: "gzip", DeliveryMode: amqp.Persistent, Priority: 3,
		CorrelationID: "corr-1", ReplyTo: "replies", Expiration: "600000", MessageID: "my-id-1", Timestamp: ts,
		Type: "order.created", UserID: "guest", AppID: "props-test",
	}
	rc, err := pub.Publish(ctx, msg)
	if err != nil {
		t.Fatal(err)
	}
	if err := rc.Wait(ctx); err != nil {
		t.Fatalf("confirm: %v", err)
	}
	if err := pub.Close(ctx); err != nil {
		t.Fatal(err)
	}

	c, err := consumer.New(consumer.Config{URLs: []string{url}, Queue: q, Topology: topo, StorePath: filepath.Join(dir, "c.db"), Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close(context.Background())
	runCtx, stop := context.WithCancel(ctx)
	var got *consumer.Message
	err = c.Run(runCtx, func(_ context.Context, m *consumer.Message) error {
		cp := *m
		got = &cp
		stop()
		return nil
	})
	if err != nil {
		t.Fatalf("run: %v", err)
	}
	if got == nil {
		t.Fatal("no message handled")
	}
	want := props.Properties{
		ContentType: "application/json", ContentEncoding: "gzip", DeliveryMode: amqp.Persistent, Priority: 3,
		CorrelationID: "corr-1", ReplyTo: "replies", Expiration: "600000", MessageID: "my-id-1", Timestamp: ts,
		Type: "order.created", UserID: "guest", AppID: "props-test",
	}
	gp := got.Properties
	if !gp.Timestamp.Equal(want.Timestamp) {
		t.Fatalf("timestamp %v, want %v", gp.Timestamp, want.Timestamp)
	}
	gp.Timestamp = want.Timestamp // the same instant; the decoded one is in time.Local
	if gp != want {
		t.Fatalf("properties:\n got %+v\nwant %+v", got.Properties, want)
	}
	if got.Headers["x-mine"] != "yes" || string(got.Body) != "body" || !got.Stamped || got.Stamp.Source != "props" {
		t.Fatalf("headers, body or stamp lost: headers %v body %q stamp %v (stamped %v)", got.Headers, got.Body, got.Stamp, got.Stamped)
	}
}
