// Package tracing carries OpenTelemetry traces through rabbitkit: from the caller of Publish,
// through the journal and the broker, into the consumer's handler. It is a separate package so
// that publisher and consumer do not depend on OpenTelemetry; it uses only the otel API and
// propagators (go.opentelemetry.io/otel, .../otel/trace, .../otel/propagation). Install an SDK
// TracerProvider (go.opentelemetry.io/otel/sdk/trace) in the application to record the spans;
// without one the spans are no-ops but the caller's context is still propagated.
//
// # Publisher side
//
// [Publisher] wraps a *publisher.Publisher. Publish and PublishAsync start a PRODUCER span named
// "publish <exchange>" ("publish amq.default" for the default exchange: a routing key may carry
// ids and would make span names high-cardinality), a child of the span in ctx, and inject its
// context as W3C traceparent/tracestate headers into a copy of msg.Headers (the caller's map is
// never modified). That context is the message's creation context: it is journaled with the
// message, so whatever happens later (a reconnect, a resend from the journal after a restart an
// hour later, a redrive of a parked entry) the broker receives the same traceparent.
//
// The span covers acceptance only: it ends when Publish returns, that is once the message is
// durably journaled (or refused), not when the broker confirms it. Acceptance is the operation the
// caller waits for; the confirm may come hours later after an outage, and a span left open that
// long is lost when the process stops and misleads latency views. The confirm is therefore not
// traced: use Receipt.Wait and the publisher's metrics for it. A journaled message gets the stamp
// attributes (rabbitkit.stamp.source, .epoch, .stream, .seq) and messaging.message.id (its
// message-id: the caller's MessageID or the stamp) before the span ends.
//
// If msg.Headers already carry a valid traceparent (a custom creation context set by the caller,
// for instance with [Inject], or copied from a consumed message), it is kept unchanged and the
// publish span links to it, as the messaging conventions ask. A malformed one is replaced.
//
// [Inject] is the span-less alternative: it writes ctx's span context into msg.Headers, for
// PublishBatch, TryPublish or an outbox (publisher/pgoutbox) that the wrapper does not cover.
//
// # Consumer side
//
// [Handler] and [TxHandler] wrap a handler. Each call extracts the creation context from the
// delivery's headers and starts a CONSUMER span named "process <queue>" (Options.Queue) around the
// handler, whose ctx carries the span.
//
// Link or child: the process span is a child of the creation context, and also links to it. The
// messaging conventions use links by default and allow the creation context as the parent
// "exclusively for single messages scenarios", asking instrumentations to document the choice.
// A rabbitkit handler always processes exactly one message, and the point of the kit is one
// logical effect per published message; being a child puts the consumer's work (and whatever it
// calls) in the publishing request's trace, so the trace id set by the caller of Publish is the
// trace id in the handler's ctx, even for a message resent an hour later. The link is added as
// well so that tools that follow links between PRODUCER and CONSUMER spans find it. When the
// handler's ctx already holds a valid span (an ambient span of the ctx given to Run), that span is
// linked, as the conventions ask. Options.LinkOnly restores the conventions' default: the span is
// a child of the ambient context (or a root) and only links to the creation context. A delivery
// without a valid creation context (none, malformed, or a foreign value type) gives a process span
// in a new trace (or under the ambient span); it never fails the handler.
//
// A TxHandler may be called more than once for one delivery (its group's transaction is rolled
// back and rerun); each call is a span of its own. rabbitkit.attempt numbers the handler attempts.
// A TxHandler runs on the consumer's store goroutine, so the span processor must not block: use
// the SDK's batching processor (sdktrace.WithBatcher), not a synchronous exporter.
//
// # Attributes
//
// Following the OpenTelemetry messaging semantic conventions for RabbitMQ (semconv v1.43.0):
// messaging.system=rabbitmq; messaging.operation.name=publish|process and
// messaging.operation.type=send|process ("publish" as an operation type was renamed "send");
// messaging.destination.name ("{exchange}:{routing key}" on the producer,
// "{exchange}:{routing key}:{queue}" on the consumer, empty parts omitted, a routing key equal to
// the queue written once, "amq.default" when nothing is left);
// messaging.rabbitmq.destination.routing_key when not empty; messaging.message.id;
// messaging.message.conversation_id (the correlation id) when set; error.type on failure.
// rabbitkit's own: rabbitkit.stamp.source, rabbitkit.stamp.epoch, rabbitkit.stamp.stream,
// rabbitkit.stamp.seq (stamped messages only); rabbitkit.attempt, rabbitkit.redelivered
// and rabbitkit.duplicate (consumer).
//
// error.type is one of: invalid_message, closed, buffer_full, accept_unknown (publisher),
// poison, skipped, panic (consumer), canceled, deadline_exceeded, or else the error's type as
// semconv.ErrorType gives it ("_OTHER" for plain errors.New values).
//
// # Duplicates
//
// A delivery that the consumer drops as a duplicate never reaches the handler, and package
// consumer has no hook that sees it with its headers, so no span is recorded for it: every
// process span has rabbitkit.duplicate=false. Duplicates are counted by the consumer's
// rabbitkit_consumer_duplicates_total metric; duplicates whose body differs also reach
// consumer.Config.OnConflict. A consumer hook for dropped duplicates would let this package
// record them as process spans with rabbitkit.duplicate=true.
//
// # Header carrier
//
// [HeaderCarrier] adapts AMQP headers to the propagators. It reads string and []byte values,
// ignores values of any other type, and never panics.
package tracing
