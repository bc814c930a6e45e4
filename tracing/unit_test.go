package tracing_test

import (
	"context"
	"errors"
	"fmt"
	"testing"

	amqp "github.com/rabbitmq/amqp091-go"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"

	"github.com/rabbitkit/rabbitkit/consumer"
	"github.com/rabbitkit/rabbitkit/protocol"
	"github.com/rabbitkit/rabbitkit/publisher"
	"github.com/rabbitkit/rabbitkit/tracing"
)

func TestInjectCopiesHeaders(t *testing.T) {
	tp, _ := newProvider(t)
	ctx, span := tp.Tracer("test").Start(context.Background(), "request")
	defer span.End()

	orig := amqp.Table{"app": "x", "tracestate": "stale=1", "traceparent": "garbage"}
	msg := publisher.Message{Exchange: "ex", Headers: orig}
	tracing.Inject(ctx, &msg)
	if len(orig) != 3 || orig["traceparent"] != "garbage" || orig["tracestate"] != "stale=1" {
		t.Fatalf("the caller's headers were modified: %v", orig)
	}
	want := fmt.Sprintf("00-%s-%s-01", span.SpanContext().TraceID(), span.SpanContext().SpanID())
	if msg.Headers["traceparent"] != want || msg.Headers["app"] != "x" {
		t.Fatalf("headers %v, want traceparent %s and app", msg.Headers, want)
	}
	if _, ok := msg.Headers["tracestate"]; ok {
		t.Fatalf("a stale tracestate travels with the new traceparent: %v", msg.Headers)
	}

	// Without a span in ctx the message is left alone.
	msg = publisher.Message{Headers: orig}
	tracing.Inject(context.Background(), &msg)
	if fmt.Sprintf("%p", msg.Headers) != fmt.Sprintf("%p", orig) {
		t.Fatal("Inject without a span context replaced the headers")
	}
	// Nil headers get a map.
	msg = publisher.Message{}
	tracing.Inject(ctx, &msg)
	if msg.Headers["traceparent"] != want {
		t.Fatalf("nil headers: %v", msg.Headers)
	}
}

// stampedMessage is a delivery as the consumer hands it to a handler.
func stampedMessage(h amqp.Table) *consumer.Message {
	s := protocol.Stamp{Source: "shop", Epoch: 3, Stream: "orders", Seq: 42}
	return &consumer.Message{
		Body: []byte("x"), Headers: h, Exchange: "shop", RoutingKey: "orders.created",
		Properties: consumer.Properties{MessageID: s.String(), CorrelationID: "req-7"},
		Stamp:      s, Stamped: true, Attempt: 2, Redelivered: true,
	}
}

func TestHandlerChildOfCreationContext(t *testing.T) {
	tp, sr := newProvider(t)
	pctx, producer := tp.Tracer("test").Start(context.Background(), "producer", trace.WithSpanKind(trace.SpanKindProducer))
	producer.End()
	var msg publisher.Message
	tracing.Inject(pctx, &msg)

	// The ctx given to the handler has an ambient span of its own (Run's ctx).
	actx, ambient := tp.Tracer("test").Start(context.Background(), "ambient")
	defer ambient.End()

	var seen trace.SpanContext
	h := tracing.Handler(func(ctx context.Context, m *consumer.Message) error {
		seen = trace.SpanContextFromContext(ctx)
		return nil
	}, tracing.Options{TracerProvider: tp, Queue: "orders-q"})
	if err := h(actx, stampedMessage(msg.Headers)); err != nil {
		t.Fatal(err)
	}
	spans := byName(sr, "process orders-q")
	if len(spans) != 1 {
		t.Fatalf("%d process spans", len(spans))
	}
	s := spans[0]
	if s.SpanKind() != trace.SpanKindConsumer {
		t.Errorf("kind %v", s.SpanKind())
	}
	if s.Parent().SpanID() != producer.SpanContext().SpanID() || s.SpanContext().TraceID() != producer.SpanContext().TraceID() {
		t.Errorf("parent %v, want the producer span %v", s.Parent(), producer.SpanContext())
	}
	if !seen.Equal(s.SpanContext()) {
		t.Errorf("the handler's ctx holds %v, not the process span %v", seen, s.SpanContext())
	}
	links := s.Links()
	if len(links) != 2 || links[0].SpanContext.SpanID() != producer.SpanContext().SpanID() || links[1].SpanContext.SpanID() != ambient.SpanContext().SpanID() {
		t.Errorf("links %+v, want the creation context and the ambient span", links)
	}
	wantAttrs(t, s, map[string]any{
		"messaging.system": "rabbitmq", "messaging.operation.name": "process", "messaging.operation.type": "process",
		"messaging.destination.name":                 "shop:orders.created:orders-q",
		"messaging.rabbitmq.destination.routing_key": "orders.created",
		"messaging.message.id":                       "rk2:shop:3:orders:42",
		"messaging.message.conversation_id":          "req-7",
		"rabbitkit.stamp.source":                     "shop", "rabbitkit.stamp.epoch": 3, "rabbitkit.stamp.stream": "orders", "rabbitkit.stamp.seq": 42,
		"rabbitkit.duplicate": false, "rabbitkit.attempt": 2, "rabbitkit.redelivered": true,
	})
	if s.Status().Code != codes.Unset {
		t.Errorf("status %v", s.Status())
	}
}

func TestHandlerLinkOnly(t *testing.T) {
	tp, sr := newProvider(t)
	pctx, producer := tp.Tracer("test").Start(context.Background(), "producer")
	producer.End()
	var msg publisher.Message
	tracing.Inject(pctx, &msg)

	h := tracing.TxHandler(func(ctx context.Context, tx int, m *consumer.Message) error { return nil },
		tracing.Options{TracerProvider: tp, Queue: "q", LinkOnly: true})
	if err := h(context.Background(), 1, stampedMessage(msg.Headers)); err != nil {
		t.Fatal(err)
	}
	s := byName(sr, "process q")[0]
	if s.Parent().IsValid() || s.SpanContext().TraceID() == producer.SpanContext().TraceID() {
		t.Errorf("LinkOnly span has parent %v in trace %v", s.Parent(), s.SpanContext().TraceID())
	}
	if l := s.Links(); len(l) != 1 || l[0].SpanContext.SpanID() != producer.SpanContext().SpanID() {
		t.Errorf("links %+v", l)
	}
}

// Malformed, foreign and oddly typed header values are ignored: a new trace, no link, the handler
// runs.
func TestHandlerIgnoresBadHeaders(t *testing.T) {
	for name, h := range map[string]amqp.Table{
		"none":           nil,
		"garbage":        {"traceparent": "not a traceparent", "tracestate": "=,=,"},
		"zero trace id":  {"traceparent": "00-00000000000000000000000000000000-00f067aa0ba902b7-01"},
		"bad version":    {"traceparent": "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"},
		"int":            {"traceparent": int64(7)},
		"table":          {"traceparent": amqp.Table{"traceparent": validTP}},
		"array":          {"traceparent": []any{validTP}},
		"not amqp":       {"traceparent": struct{}{}},
		"upper-case key": {"Traceparent": validTP},
		"huge":           {"traceparent": string(make([]byte, 1<<20))},
	} {
		t.Run(name, func(t *testing.T) {
			tp, sr := newProvider(t)
			calls := 0
			err := tracing.Handler(func(ctx context.Context, m *consumer.Message) error {
				calls++
				return nil
			}, tracing.Options{TracerProvider: tp, Queue: "q"})(context.Background(), stampedMessage(h))
			if err != nil || calls != 1 {
				t.Fatalf("err %v, %d calls", err, calls)
			}
			s := byName(sr, "process q")[0]
			if s.Parent().IsValid() || len(s.Links()) != 0 {
				t.Fatalf("parent %v, links %v", s.Parent(), s.Links())
			}
		})
	}
}

func TestHandlerErrorAndPanic(t *testing.T) {
	tp, sr := newProvider(t)
	opts := tracing.Options{TracerProvider: tp, Queue: "q"}
	boom := errors.New("boom")
	if err := tracing.Handler(func(context.Context, *consumer.Message) error { return boom }, opts)(context.Background(), stampedMessage(nil)); err != boom {
		t.Fatalf("err %v", err)
	}
	poison := fmt.Errorf("bad order: %w", consumer.ErrPoison)
	_ = tracing.Handler(func(context.Context, *consumer.Message) error { return poison }, opts)(context.Background(), stampedMessage(nil))
	func() {
		defer func() {
			if p := recover(); p != "kaput" {
				t.Errorf("recovered %v, want the handler's panic", p)
			}
		}()
		_ = tracing.Handler(func(context.Context, *consumer.Message) error { panic("kaput") }, opts)(context.Background(), stampedMessage(nil))
	}()
	spans := byName(sr, "process q")
	if len(spans) != 3 {
		t.Fatalf("%d spans", len(spans))
	}
	for i, want := range []string{"_OTHER", "poison", "panic"} {
		if spans[i].Status().Code != codes.Error {
			t.Errorf("span %d: status %v", i, spans[i].Status())
		}
		wantAttrs(t, spans[i], map[string]any{"error.type": want})
	}
}

func TestExtract(t *testing.T) {
	m := stampedMessage(amqp.Table{"traceparent": validTP, "tracestate": "rojo=00f067aa0ba902b7"})
	sc := trace.SpanContextFromContext(tracing.Extract(context.Background(), m))
	if sc.TraceID().String() != "4bf92f3577b34da6a3ce929d0e0e4736" || sc.TraceState().Get("rojo") != "00f067aa0ba902b7" {
		t.Fatalf("extracted %v", sc)
	}
	if sc := trace.SpanContextFromContext(tracing.Extract(context.Background(), stampedMessage(nil))); sc.IsValid() {
		t.Fatalf("extracted %v from no headers", sc)
	}
}
