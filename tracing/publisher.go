package tracing

import (
	"context"
	"maps"

	amqp "github.com/rabbitmq/amqp091-go"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/propagation"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
	"go.opentelemetry.io/otel/trace"

	"github.com/rabbitkit/rabbitkit/publisher"
)

// Inject writes the span context of ctx into msg.Headers as W3C traceparent and tracestate,
// replacing any there, so that the message carries it through the journal to the consumer. The
// headers are copied first: the map msg.Headers referred to is not modified. Without a valid span
// context in ctx, msg is left as it is. Inject starts no span; [Publisher] does both.
func Inject(ctx context.Context, msg *publisher.Message) {
	inject(ctx, propagation.TraceContext{}, msg)
}

// inject writes ctx's context with prop into a copy of msg.Headers.
func inject(ctx context.Context, prop propagation.TextMapPropagator, msg *publisher.Message) {
	if !trace.SpanContextFromContext(ctx).IsValid() {
		return
	}
	fields := prop.Fields()
	h := make(amqp.Table, len(msg.Headers)+len(fields))
	maps.Copy(h, msg.Headers)
	for _, f := range fields {
		delete(h, f) // a stale tracestate must not travel with a new traceparent
	}
	prop.Inject(ctx, HeaderCarrier(h))
	msg.Headers = h
}

// Publisher is a *publisher.Publisher whose Publish and PublishAsync trace each message (see the
// package doc). It is safe for concurrent use.
type Publisher struct {
	p *publisher.Publisher
	t *tracer
}

// NewPublisher wraps p. Options.Queue and Options.LinkOnly do not apply.
func NewPublisher(p *publisher.Publisher, opts Options) *Publisher {
	return &Publisher{p: p, t: newTracer(opts)}
}

// Unwrap returns the wrapped Publisher, for the methods Publisher does not wrap.
func (p *Publisher) Unwrap() *publisher.Publisher { return p.p }

// Publish is publisher.Publisher.Publish in a "publish <exchange>" span that ends when it returns:
// once msg is journaled (the span is then successful) or refused (the span records the error).
func (p *Publisher) Publish(ctx context.Context, msg publisher.Message) (*publisher.Receipt, error) {
	ctx, span := p.t.startPublish(ctx, &msg)
	r, err := p.p.Publish(ctx, msg)
	p.t.endPublish(span, &msg, r, err)
	return r, err
}

// PublishAsync is publisher.Publisher.PublishAsync in a "publish <exchange>" span that ends once the
// receipt is journaled or failed (a goroutine waits for that).
func (p *Publisher) PublishAsync(ctx context.Context, msg publisher.Message) *publisher.Receipt {
	ctx, span := p.t.startPublish(ctx, &msg)
	r := p.p.PublishAsync(ctx, msg)
	select {
	case <-r.Journaled():
		p.t.endPublish(span, &msg, r, r.WaitJournaled(context.Background()))
	default:
		go func() {
			p.t.endPublish(span, &msg, r, r.WaitJournaled(context.Background()))
		}()
	}
	return r
}

// startPublish starts the producer span and puts the creation context in msg.Headers (a copy),
// unless they already carry a valid one: that one is kept, and the span links to it.
func (t *tracer) startPublish(ctx context.Context, msg *publisher.Message) (context.Context, trace.Span) {
	exchange := msg.Exchange
	if exchange == "" {
		exchange = "amq.default"
	}
	attrs := []attribute.KeyValue{
		semconv.MessagingSystemRabbitMQ,
		semconv.MessagingOperationName("publish"),
		semconv.MessagingOperationTypeSend,
		semconv.MessagingDestinationName(producerDestination(msg.Exchange, msg.RoutingKey)),
	}
	if msg.RoutingKey != "" {
		attrs = append(attrs, semconv.MessagingRabbitMQDestinationRoutingKey(msg.RoutingKey))
	}
	if msg.CorrelationID != "" {
		attrs = append(attrs, semconv.MessagingMessageConversationID(msg.CorrelationID))
	}
	opts := []trace.SpanStartOption{trace.WithSpanKind(trace.SpanKindProducer), trace.WithAttributes(attrs...)}
	custom := trace.SpanContextFromContext(t.prop.Extract(context.Background(), HeaderCarrier(msg.Headers)))
	if custom.IsValid() {
		opts = append(opts, trace.WithLinks(trace.Link{SpanContext: custom}))
	}
	ctx, span := t.t.Start(ctx, "publish "+exchange, opts...)
	if !custom.IsValid() {
		inject(ctx, t.prop, msg)
	}
	return ctx, span
}

func (t *tracer) endPublish(span trace.Span, msg *publisher.Message, r *publisher.Receipt, err error) {
	if err != nil {
		fail(span, err)
	} else if r != nil {
		s := r.Stamp()
		id := msg.MessageID
		if id == "" {
			id = s.String()
		}
		span.SetAttributes(stampAttrs(s)...)
		span.SetAttributes(semconv.MessagingMessageID(id))
	}
	span.End()
}
