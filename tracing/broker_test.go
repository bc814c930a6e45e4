package tracing_test

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"

	"github.com/rabbitkit/rabbitkit/consumer"
	"github.com/rabbitkit/rabbitkit/internal/testbroker"
	"github.com/rabbitkit/rabbitkit/metrics"
	"github.com/rabbitkit/rabbitkit/protocol"
	"github.com/rabbitkit/rabbitkit/publisher"
	"github.com/rabbitkit/rabbitkit/topology"
	"github.com/rabbitkit/rabbitkit/tracing"
)

const routingKey = "orders.created"

// route is an exchange bound to a queue on the shared broker, deleted when the test ends.
type route struct {
	url, exchange, queue string
	top                  topology.Topology
}

func newRoute(t *testing.T) route {
	t.Helper()
	url := testbroker.SharedURL(t)
	r := route{url: url, exchange: testbroker.Name(t, "trace-ex"), queue: testbroker.Name(t, "trace")}
	r.top = topology.Topology{
		Exchanges: []topology.Exchange{{Name: r.exchange}},
		Queues:    []topology.Queue{{Name: r.queue}},
		Bindings:  []topology.Binding{{Queue: r.queue, Exchange: r.exchange, Key: routingKey}},
	}
	testbroker.DeleteQueues(t, url, r.queue, r.queue+".parked")
	testbroker.DeleteExchanges(t, url, r.exchange)
	return r
}

func (r route) publisher(t *testing.T, url, journal string, m metrics.Recorder) *publisher.Publisher {
	t.Helper()
	p, err := publisher.New(publisher.Config{
		URLs: []string{url}, Source: "trace-test", JournalPath: journal, Topology: r.top,
		Logger: quietLogger(), Metrics: m,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = p.Close(ctx)
	})
	return p
}

// handled is what the handler saw of one delivery.
type handled struct {
	sc    trace.SpanContext
	stamp protocol.Stamp
}

// consumeOne runs a consumer on the route's queue with a traced transactional handler until it
// has handled one message, and returns what the handler saw.
func (r route) consumeOne(t *testing.T, tp trace.TracerProvider) handled {
	t.Helper()
	c, err := consumer.New(consumer.Config{
		URLs: []string{r.url}, Queue: r.queue, Topology: r.top,
		StorePath: filepath.Join(t.TempDir(), "consumer.db"), Logger: quietLogger(),
	})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close(context.Background())
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	var got []handled
	err = c.RunTx(ctx, tracing.TxHandler(func(ctx context.Context, _ *bolt.Tx, m *consumer.Message) error {
		got = append(got, handled{sc: trace.SpanContextFromContext(ctx), stamp: m.Stamp})
		cancel()
		return nil
	}, tracing.Options{TracerProvider: tp, Queue: r.queue}))
	if err != nil {
		t.Fatalf("run: %v", err)
	}
	if len(got) != 1 {
		t.Fatalf("the handler ran %d times", len(got))
	}
	return got[0]
}

// checkTrace asserts the trace request → publish → process: the handler's ctx is in the caller's
// trace, its process span is a child of the publish span and links to it, with the attributes.
func (r route) checkTrace(t *testing.T, sr *tracetest.SpanRecorder, req trace.SpanContext, h handled, stamp protocol.Stamp) {
	t.Helper()
	pub := byName(sr, "publish "+r.exchange)
	proc := byName(sr, "process "+r.queue)
	if len(pub) != 1 || len(proc) != 1 {
		t.Fatalf("%d publish and %d process spans", len(pub), len(proc))
	}
	p, c := pub[0], proc[0]
	if h.sc.TraceID() != req.TraceID() {
		t.Fatalf("the handler's trace id is %s, the caller of Publish had %s", h.sc.TraceID(), req.TraceID())
	}
	if p.Parent().SpanID() != req.SpanID() {
		t.Errorf("the publish span's parent is %v, not the request", p.Parent())
	}
	if c.Parent().SpanID() != p.SpanContext().SpanID() || !c.Parent().IsRemote() {
		t.Errorf("the process span's parent is %v, not the remote publish span %v", c.Parent(), p.SpanContext())
	}
	if l := c.Links(); len(l) != 1 || l[0].SpanContext.SpanID() != p.SpanContext().SpanID() {
		t.Errorf("process span links %+v, want the publish span", l)
	}
	if !h.sc.Equal(c.SpanContext()) {
		t.Errorf("the handler's ctx has span %v, not the process span %v", h.sc, c.SpanContext())
	}
	if h.stamp != stamp {
		t.Errorf("handled %v, published %v", h.stamp, stamp)
	}
	common := map[string]any{
		"messaging.system": "rabbitmq", "messaging.rabbitmq.destination.routing_key": routingKey,
		"messaging.message.id": stamp.String(), "rabbitkit.stamp.source": stamp.Source, "rabbitkit.stamp.epoch": stamp.Epoch,
		"rabbitkit.stamp.stream": stamp.Stream, "rabbitkit.stamp.seq": stamp.Seq,
	}
	wantAttrs(t, p, common)
	wantAttrs(t, c, common)
	wantAttrs(t, p, map[string]any{"messaging.operation.type": "send", "messaging.destination.name": r.exchange + ":" + routingKey})
	wantAttrs(t, c, map[string]any{"rabbitkit.duplicate": false, "messaging.operation.type": "process", "messaging.destination.name": r.exchange + ":" + routingKey + ":" + r.queue})
	if p.SpanKind() != trace.SpanKindProducer || c.SpanKind() != trace.SpanKindConsumer {
		t.Errorf("kinds %v, %v", p.SpanKind(), c.SpanKind())
	}
}

// request starts the caller's span.
func request(tp *sdktrace.TracerProvider) (context.Context, trace.Span) {
	return tp.Tracer("test").Start(context.Background(), "request")
}

// A trace through a real publisher, the broker and a real consumer.
func TestTraceThroughBroker(t *testing.T) {
	r := newRoute(t)
	tp, sr := newProvider(t)
	p := tracing.NewPublisher(r.publisher(t, r.url, filepath.Join(t.TempDir(), "journal.db"), nil), tracing.Options{TracerProvider: tp})
	ctx, req := request(tp)
	rc, err := p.Publish(ctx, publisher.Message{Exchange: r.exchange, RoutingKey: routingKey, Body: []byte("order 1")})
	req.End()
	if err != nil {
		t.Fatal(err)
	}
	wctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := rc.Wait(wctx); err != nil {
		t.Fatal(err)
	}
	h := r.consumeOne(t, tp)
	r.checkTrace(t, sr, req.SpanContext(), h, rc.Stamp())
}

// The connection is cut after the message was sent and before its confirm: the publisher resends
// it on the next connection, with the same creation context.
func TestTraceSurvivesResend(t *testing.T) {
	r := newRoute(t)
	px := testbroker.NewProxy(t, r.url)
	tp, sr := newProvider(t)
	mem := &metrics.Memory{}
	pp := r.publisher(t, px.URL, filepath.Join(t.TempDir(), "journal.db"), mem)
	wctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if err := pp.WaitReady(wctx); err != nil {
		t.Fatal(err)
	}
	p := tracing.NewPublisher(pp, tracing.Options{TracerProvider: tp})
	px.Latency(t, time.Second) // the confirm cannot come back before the cut
	ctx, req := request(tp)
	rc, err := p.Publish(ctx, publisher.Message{Exchange: r.exchange, RoutingKey: routingKey, Body: []byte("order 1")})
	req.End()
	if err != nil {
		t.Fatal(err)
	}
	for mem.Get(publisher.MetricPublished) < 1 {
		if wctx.Err() != nil {
			t.Fatal("never sent")
		}
		time.Sleep(5 * time.Millisecond)
	}
	px.Cut(t)
	px.Restore(t)
	if err := rc.Wait(wctx); err != nil {
		t.Fatal(err)
	}
	if n := mem.Get(publisher.MetricResent); n < 1 {
		t.Fatalf("resent %v times: the test did not force a resend", n)
	}
	h := r.consumeOne(t, tp)
	r.checkTrace(t, sr, req.SpanContext(), h, rc.Stamp())
}

// The publisher is closed while the broker is unreachable and another one opens the same journal
// later: what it sends from the journal carries the creation context journaled with the message.
func TestTraceSurvivesReopenedJournal(t *testing.T) {
	r := newRoute(t)
	px := testbroker.NewProxy(t, r.url)
	px.Down(t)
	tp, sr := newProvider(t)
	journal := filepath.Join(t.TempDir(), "journal.db")
	first, err := publisher.New(publisher.Config{
		URLs: []string{px.URL}, Source: "trace-test", JournalPath: journal, Topology: r.top, Logger: quietLogger(),
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, req := request(tp)
	rc, err := tracing.NewPublisher(first, tracing.Options{TracerProvider: tp}).Publish(ctx, publisher.Message{Exchange: r.exchange, RoutingKey: routingKey, Body: []byte("order 1")})
	req.End()
	if err != nil {
		t.Fatal(err)
	}
	stamp := rc.Stamp()
	cctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	_ = first.Close(cctx) // the message stays journaled, unconfirmed
	cancel()

	second := r.publisher(t, r.url, journal, nil) // sends what the journal holds; no tracing needed
	wctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := second.Flush(wctx); err != nil {
		t.Fatal(err)
	}
	h := r.consumeOne(t, tp)
	r.checkTrace(t, sr, req.SpanContext(), h, stamp)
}
