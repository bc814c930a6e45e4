package tracing

import (
	"context"
	"fmt"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/propagation"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
	"go.opentelemetry.io/otel/trace"

	"github.com/rabbitkit/rabbitkit/consumer"
)

// Extract returns ctx with the creation context that m's headers carry (W3C traceparent and
// tracestate) as its remote parent, or ctx itself when they carry none that is valid. It starts
// no span; [Handler] and [TxHandler] do.
func Extract(ctx context.Context, m *consumer.Message) context.Context {
	return propagation.TraceContext{}.Extract(ctx, HeaderCarrier(m.Headers))
}

// Handler wraps h: each call runs in a CONSUMER span "process <queue>" that is a child of the
// message's creation context and links to it (see the package doc; Options.LinkOnly changes it).
// The span records h's error or panic (the panic goes on to the consumer, which parks or retries
// as usual).
func Handler(h consumer.Handler, opts Options) consumer.Handler {
	t := newTracer(opts)
	return func(ctx context.Context, m *consumer.Message) (err error) {
		ctx, span := t.startProcess(ctx, m)
		defer t.endProcess(span, &err)
		return h(ctx, m)
	}
}

// TxHandler is Handler for transactional handlers. Each call is one span, also when the consumer
// calls the handler again for the same delivery after its group's transaction was rolled back.
func TxHandler[T any](h consumer.TxHandler[T], opts Options) consumer.TxHandler[T] {
	t := newTracer(opts)
	return func(ctx context.Context, tx T, m *consumer.Message) (err error) {
		ctx, span := t.startProcess(ctx, m)
		defer t.endProcess(span, &err)
		return h(ctx, tx, m)
	}
}

func (t *tracer) startProcess(ctx context.Context, m *consumer.Message) (context.Context, trace.Span) {
	carrier := HeaderCarrier(m.Headers)
	creation := trace.SpanContextFromContext(t.prop.Extract(context.Background(), carrier))
	attrs := []attribute.KeyValue{
		semconv.MessagingSystemRabbitMQ,
		semconv.MessagingOperationName("process"),
		semconv.MessagingOperationTypeProcess,
		semconv.MessagingDestinationName(consumerDestination(m.Exchange, m.RoutingKey, t.opts.Queue)),
		AttrDuplicate.Bool(false),
		AttrAttempt.Int(m.Attempt),
		AttrRedelivered.Bool(m.Redelivered),
	}
	if m.RoutingKey != "" {
		attrs = append(attrs, semconv.MessagingRabbitMQDestinationRoutingKey(m.RoutingKey))
	}
	if m.Properties.MessageID != "" {
		attrs = append(attrs, semconv.MessagingMessageID(m.Properties.MessageID))
	}
	if m.Properties.CorrelationID != "" {
		attrs = append(attrs, semconv.MessagingMessageConversationID(m.Properties.CorrelationID))
	}
	if m.Stamped {
		attrs = append(attrs, stampAttrs(m.Stamp)...)
	}
	opts := []trace.SpanStartOption{trace.WithSpanKind(trace.SpanKindConsumer), trace.WithAttributes(attrs...)}
	parent := ctx
	if creation.IsValid() {
		opts = append(opts, trace.WithLinks(trace.Link{SpanContext: creation}))
		if !t.opts.LinkOnly {
			if ambient := trace.SpanContextFromContext(ctx); ambient.IsValid() {
				opts = append(opts, trace.WithLinks(trace.Link{SpanContext: ambient}))
			}
			// Extract into ctx itself, so that ctx's values and whatever else the propagator
			// carries (baggage, with a composite propagator) reach the handler.
			parent = t.prop.Extract(ctx, carrier)
		}
	}
	name := "process"
	if t.opts.Queue != "" {
		name += " " + t.opts.Queue
	}
	return t.t.Start(parent, name, opts...)
}

// endProcess ends span with the handler's outcome: *err, or a panic in flight, which it records
// and re-raises.
func (t *tracer) endProcess(span trace.Span, err *error) {
	if p := recover(); p != nil {
		span.RecordError(fmt.Errorf("panic: %v", p))
		span.SetStatus(codes.Error, fmt.Sprint("panic: ", p))
		span.SetAttributes(semconv.ErrorTypeKey.String("panic"))
		span.End()
		panic(p)
	}
	if *err != nil {
		fail(span, *err)
	}
	span.End()
}
