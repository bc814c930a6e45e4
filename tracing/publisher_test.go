package tracing_test

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"

	"github.com/rabbitkit/rabbitkit/publisher"
	"github.com/rabbitkit/rabbitkit/tracing"
)

// offlinePublisher journals into a temp file and never reaches a broker (nothing listens on port
// 1): Publish works all the same, which is all the producer span is about.
func offlinePublisher(t *testing.T) *publisher.Publisher {
	t.Helper()
	p, err := publisher.New(publisher.Config{
		URLs: []string{"amqp://guest:guest@127.0.0.1:1/"}, Source: "trace-unit",
		JournalPath: filepath.Join(t.TempDir(), "journal.db"), Logger: quietLogger(),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
		defer cancel()
		_ = p.Close(ctx) // leaves the messages journaled: ErrUnconfirmed
	})
	return p
}

func TestPublishSpan(t *testing.T) {
	tp, sr := newProvider(t)
	p := tracing.NewPublisher(offlinePublisher(t), tracing.Options{TracerProvider: tp})
	ctx, req := tp.Tracer("test").Start(context.Background(), "request")
	caller := amqp.Table{"app": "v"}
	r, err := p.Publish(ctx, publisher.Message{Exchange: "shop", RoutingKey: "orders.created", Stream: "orders", CorrelationID: "req-7", Headers: caller, Body: []byte("x")})
	req.End()
	if err != nil {
		t.Fatal(err)
	}
	if len(caller) != 1 {
		t.Fatalf("the caller's headers were modified: %v", caller)
	}
	s := byName(sr, "publish shop")
	if len(s) != 1 {
		t.Fatalf("%d publish spans of %d", len(s), len(sr.Ended()))
	}
	if s[0].SpanKind() != trace.SpanKindProducer || s[0].Parent().SpanID() != req.SpanContext().SpanID() {
		t.Errorf("kind %v, parent %v", s[0].SpanKind(), s[0].Parent())
	}
	st := r.Stamp()
	wantAttrs(t, s[0], map[string]any{
		"messaging.system": "rabbitmq", "messaging.operation.name": "publish", "messaging.operation.type": "send",
		"messaging.destination.name":                 "shop:orders.created",
		"messaging.rabbitmq.destination.routing_key": "orders.created",
		"messaging.message.id":                       st.String(),
		"messaging.message.conversation_id":          "req-7",
		"rabbitkit.stamp.source":                     "trace-unit", "rabbitkit.stamp.epoch": st.Epoch, "rabbitkit.stamp.stream": "orders", "rabbitkit.stamp.seq": 1,
	})

	// The default exchange, the caller's own message-id.
	_, err = p.Publish(context.Background(), publisher.Message{RoutingKey: "q", MessageID: "order-1", Body: []byte("x")})
	if err != nil {
		t.Fatal(err)
	}
	s = byName(sr, "publish amq.default")
	if len(s) != 1 || s[0].Parent().IsValid() {
		t.Fatalf("default exchange spans %v", s)
	}
	wantAttrs(t, s[0], map[string]any{"messaging.destination.name": "q", "messaging.message.id": "order-1"})
}

// A creation context that the caller put in the headers is kept, and the publish span links to it.
func TestPublishKeepsCustomCreationContext(t *testing.T) {
	tp, sr := newProvider(t)
	p := tracing.NewPublisher(offlinePublisher(t), tracing.Options{TracerProvider: tp})
	custom := amqp.Table{"traceparent": validTP, "tracestate": "rojo=1"}
	ctx, req := tp.Tracer("test").Start(context.Background(), "request")
	defer req.End()
	if _, err := p.Publish(ctx, publisher.Message{Exchange: "shop", Headers: custom, Body: []byte("x")}); err != nil {
		t.Fatal(err)
	}
	s := byName(sr, "publish shop")[0]
	if l := s.Links(); len(l) != 1 || l[0].SpanContext.TraceID().String() != "4bf92f3577b34da6a3ce929d0e0e4736" {
		t.Fatalf("links %+v", l)
	}
	if s.Parent().SpanID() != req.SpanContext().SpanID() {
		t.Errorf("parent %v", s.Parent())
	}
}

func TestPublishErrorSpan(t *testing.T) {
	tp, sr := newProvider(t)
	p := tracing.NewPublisher(offlinePublisher(t), tracing.Options{TracerProvider: tp})
	_, err := p.Publish(context.Background(), publisher.Message{Exchange: "shop", RoutingKey: strings.Repeat("k", 300)})
	if !errors.Is(err, publisher.ErrInvalidMessage) {
		t.Fatalf("err %v", err)
	}
	s := byName(sr, "publish shop")[0]
	if s.Status().Code != codes.Error {
		t.Errorf("status %v", s.Status())
	}
	wantAttrs(t, s, map[string]any{"error.type": "invalid_message"})
	if _, ok := attrs(s)["rabbitkit.stamp.seq"]; ok {
		t.Error("a refused message has a stamp")
	}
}

// PublishAsync's span ends once the receipt is journaled, with the stamp.
func TestPublishAsyncSpan(t *testing.T) {
	tp, sr := newProvider(t)
	p := tracing.NewPublisher(offlinePublisher(t), tracing.Options{TracerProvider: tp})
	ctx, req := tp.Tracer("test").Start(context.Background(), "request")
	var rs []*publisher.Receipt
	for i := range 20 {
		rs = append(rs, p.PublishAsync(ctx, publisher.Message{Exchange: "shop", Stream: "s", Body: fmt.Appendf(nil, "%d", i)}))
	}
	req.End()
	for _, r := range rs {
		if err := r.WaitJournaled(context.Background()); err != nil {
			t.Fatal(err)
		}
	}
	deadline := time.Now().Add(5 * time.Second)
	for len(byName(sr, "publish shop")) < len(rs) && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	spans := byName(sr, "publish shop")
	if len(spans) != len(rs) {
		t.Fatalf("%d spans ended, want %d", len(spans), len(rs))
	}
	seqs := map[int64]bool{}
	for _, s := range spans {
		seqs[attrs(s)["rabbitkit.stamp.seq"].AsInt64()] = true
		if s.Parent().SpanID() != req.SpanContext().SpanID() {
			t.Errorf("parent %v", s.Parent())
		}
	}
	if len(seqs) != len(rs) || seqs[0] {
		t.Errorf("stamp seqs %v", seqs)
	}
}
