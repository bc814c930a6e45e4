package tracing_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"

	"github.com/rabbitkit/rabbitkit/consumer"
	"github.com/rabbitkit/rabbitkit/publisher"
	"github.com/rabbitkit/rabbitkit/topology"
	"github.com/rabbitkit/rabbitkit/tracing"
)

// A request's trace crosses RabbitMQ: the publisher journals the creation context with the
// message, and the consumer's handler runs in a child span of it, in the same trace. Here the SDK
// records the spans in memory; an application installs an exporter instead (OTLP, say).
func Example() {
	url := os.Getenv("RABBITKIT_AMQP_URL")
	if url == "" {
		url = "amqp://guest:guest@127.0.0.1:5672/"
	}
	dir, _ := os.MkdirTemp("", "rk-example")
	defer os.RemoveAll(dir)
	queue := fmt.Sprintf("rk-example-%d", time.Now().UnixNano())
	top := topology.Topology{Queues: []topology.Queue{{Name: queue}}}
	defer deleteQueues(url, queue, queue+".parked")
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))

	spans := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(spans))
	defer tp.Shutdown(context.Background())

	// Publisher side: wrap the Publisher.
	pub, err := publisher.New(publisher.Config{URLs: []string{url}, Source: "shop", JournalPath: filepath.Join(dir, "journal.db"), Topology: top, Logger: quiet})
	if err != nil {
		fmt.Println(err)
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	defer pub.Close(ctx)
	traced := tracing.NewPublisher(pub, tracing.Options{TracerProvider: tp})

	reqCtx, req := tp.Tracer("shop").Start(ctx, "POST /orders")
	r, err := traced.Publish(reqCtx, publisher.Message{RoutingKey: queue, Stream: "orders", Body: []byte("order 1")})
	req.End()
	if err != nil {
		fmt.Println(err)
		return
	}
	_ = r.Wait(ctx)

	// Consumer side: wrap the handler.
	c, err := consumer.New(consumer.Config{URLs: []string{url}, Queue: queue, Topology: top, StorePath: filepath.Join(dir, "consumer.db"), Logger: quiet})
	if err != nil {
		fmt.Println(err)
		return
	}
	defer c.Close(context.Background())
	runCtx, stop := context.WithCancel(ctx)
	_ = c.Run(runCtx, tracing.Handler(func(ctx context.Context, m *consumer.Message) error {
		fmt.Println("same trace as the request:", trace.SpanContextFromContext(ctx).TraceID() == req.SpanContext().TraceID())
		stop()
		return nil
	}, tracing.Options{TracerProvider: tp, Queue: queue}))

	var publish trace.SpanContext
	for _, s := range spans.Ended() {
		name := strings.Replace(s.Name(), queue, "<queue>", 1)
		switch s.SpanKind() {
		case trace.SpanKindProducer:
			publish = s.SpanContext()
			fmt.Println(s.SpanKind(), name)
		case trace.SpanKindConsumer:
			fmt.Println(s.SpanKind(), name, "child of the publish span:", s.Parent().SpanID() == publish.SpanID())
		}
	}
	// Output:
	// same trace as the request: true
	// producer publish amq.default
	// consumer process <queue> child of the publish span: true
}

func deleteQueues(url string, names ...string) {
	conn, err := amqp.Dial(url)
	if err != nil {
		return
	}
	defer conn.Close()
	if ch, err := conn.Channel(); err == nil {
		for _, n := range names {
			_, _ = ch.QueueDelete(n, false, false, false)
		}
	}
}
