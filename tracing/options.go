package tracing

import (
	"context"
	"errors"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/propagation"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
	"go.opentelemetry.io/otel/trace"

	"github.com/rabbitkit/rabbitkit/consumer"
	"github.com/rabbitkit/rabbitkit/protocol"
	"github.com/rabbitkit/rabbitkit/publisher"
)

// ScopeName is the instrumentation scope of the tracer this package uses.
const ScopeName = "github.com/rabbitkit/rabbitkit/tracing"

// rabbitkit's own attribute keys.
const (
	AttrStampSource = attribute.Key("rabbitkit.stamp.source")
	AttrStampEpoch  = attribute.Key("rabbitkit.stamp.epoch")
	AttrStampStream = attribute.Key("rabbitkit.stamp.stream")
	AttrStampSeq    = attribute.Key("rabbitkit.stamp.seq")
	// AttrDuplicate tells whether the delivery was dropped as a duplicate. The consumer does not
	// run the handler for those, so process spans always have it false (see the package doc).
	AttrDuplicate   = attribute.Key("rabbitkit.duplicate")
	AttrAttempt     = attribute.Key("rabbitkit.attempt")     // handler attempt for the delivery, from 1
	AttrRedelivered = attribute.Key("rabbitkit.redelivered") // the broker's redelivered flag
)

// Options configure the spans. The zero value is ready to use.
type Options struct {
	// TracerProvider creates the tracer. Default otel.GetTracerProvider().
	TracerProvider trace.TracerProvider
	// Propagator writes and reads the creation context in the headers. Default
	// propagation.TraceContext{} (W3C traceparent and tracestate), whatever the global
	// propagator is: the global one is a no-op unless the application sets it. Use the same
	// propagator on both sides.
	Propagator propagation.TextMapPropagator
	// Queue is the queue the consumer consumes (consumer.Config.Queue): the span is named
	// "process <Queue>" and it is part of messaging.destination.name. Consumer side only; when
	// empty the span is named "process".
	Queue string
	// LinkOnly makes the process span a child of the handler's ctx (or a root) that only links
	// to the message's creation context, instead of its child. Consumer side only.
	LinkOnly bool
}

type tracer struct {
	t    trace.Tracer
	prop propagation.TextMapPropagator
	opts Options
}

func newTracer(o Options) *tracer {
	tp := o.TracerProvider
	if tp == nil {
		tp = otel.GetTracerProvider()
	}
	prop := o.Propagator
	if prop == nil {
		prop = propagation.TraceContext{}
	}
	return &tracer{t: tp.Tracer(ScopeName, trace.WithSchemaURL(semconv.SchemaURL)), prop: prop, opts: o}
}

func stampAttrs(s protocol.Stamp) []attribute.KeyValue {
	return []attribute.KeyValue{
		AttrStampSource.String(s.Source), AttrStampEpoch.Int64(s.Epoch),
		AttrStampStream.String(s.Stream), AttrStampSeq.Int64(s.Seq),
	}
}

// producerDestination is messaging.destination.name on the producer side (semconv v1.43.0).
func producerDestination(exchange, key string) string {
	switch {
	case exchange != "" && key != "":
		return exchange + ":" + key
	case exchange != "":
		return exchange
	case key != "":
		return key
	}
	return "amq.default"
}

// consumerDestination is messaging.destination.name on the consumer side (semconv v1.43.0).
func consumerDestination(exchange, key, queue string) string {
	if key == queue {
		queue = ""
	}
	s := ""
	for _, p := range []string{exchange, key, queue} {
		if p == "" {
			continue
		}
		if s != "" {
			s += ":"
		}
		s += p
	}
	if s == "" {
		return "amq.default"
	}
	return s
}

// errorType is error.type for err: a low-cardinality name (see the package doc).
func errorType(err error) string {
	switch {
	case errors.Is(err, publisher.ErrInvalidMessage):
		return "invalid_message"
	case errors.Is(err, publisher.ErrAcceptUnknown):
		return "accept_unknown"
	case errors.Is(err, publisher.ErrClosed):
		return "closed"
	case errors.Is(err, publisher.ErrBufferFull):
		return "buffer_full"
	case errors.Is(err, consumer.ErrPoison):
		return "poison"
	case errors.Is(err, consumer.ErrSkipped):
		return "skipped"
	case errors.Is(err, consumer.ErrPanic):
		return "panic"
	case errors.Is(err, context.Canceled):
		return "canceled"
	case errors.Is(err, context.DeadlineExceeded):
		return "deadline_exceeded"
	}
	s := semconv.ErrorType(err).Value.AsString()
	if s == "*errors.errorString" {
		return semconv.ErrorTypeOther.Value.AsString()
	}
	return s
}

// fail marks span as failed with err.
func fail(span trace.Span, err error) {
	span.RecordError(err)
	span.SetStatus(codes.Error, err.Error())
	span.SetAttributes(semconv.ErrorTypeKey.String(errorType(err)))
}
