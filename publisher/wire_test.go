package publisher

import (
	"context"
	"errors"
	"fmt"
	"math"
	"strings"
	"sync"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/rabbitkit/rabbitkit/internal/amqpwire"
	"github.com/rabbitkit/rabbitkit/internal/testbroker"
	"github.com/rabbitkit/rabbitkit/internal/testutil"
	"github.com/rabbitkit/rabbitkit/journal"
	"github.com/rabbitkit/rabbitkit/metrics"
	"github.com/rabbitkit/rabbitkit/protocol"
	"github.com/rabbitkit/rabbitkit/topology"
)

func TestCheckWire(t *testing.T) {
	long := strings.Repeat("k", 256)
	ok255 := strings.Repeat("k", 255)
	tests := []struct {
		name  string
		e     journal.Entry
		msgID string
		bad   string // "" when valid; else part of the error
	}{
		{"plain", journal.Entry{Exchange: "x", RoutingKey: "k", Stream: "s"}, "", ""},
		{"255-byte names", journal.Entry{Exchange: ok255, RoutingKey: ok255, Stream: strings.Repeat("s", protocol.MaxStreamLen)}, ok255, ""},
		{"stream over the stamp's limit", journal.Entry{Stream: strings.Repeat("s", protocol.MaxStreamLen+1)}, "", "protocol.MaxStreamLen"},
		{"stream over the limit once escaped", journal.Entry{Stream: strings.Repeat(":", 44)}, "", "132 bytes escaped"},
		{"empty stream", journal.Entry{}, "", "stream is empty"},
		{"message-id like a stamp", journal.Entry{}, "rk2:a:1:b:1", "starts like a rabbitkit stamp"},
		{"message-id like a future stamp", journal.Entry{}, "rk12:x", "starts like a rabbitkit stamp"},
		{"message-id that only starts with rk", journal.Entry{}, "rk-order-17", ""},
		{"rk- header", journal.Entry{Headers: map[string]any{"rk-seq": int64(1)}}, "", `header "rk-seq"`},
		{"rk-stamp header", journal.Entry{Headers: map[string]any{protocol.HeaderStamp: "rk2:a:1:b:1"}}, "", "reserved"},
		{"exchange", journal.Entry{Exchange: long}, "", "exchange name is 256 bytes"},
		{"routing key", journal.Entry{RoutingKey: long}, "", "routing key is 256 bytes"},
		{"message id", journal.Entry{}, long, "MessageID is 256 bytes"},
		{"correlation id", journal.Entry{Properties: journal.Properties{CorrelationID: long}}, "", "CorrelationID is 256"},
		{"app id", journal.Entry{Properties: journal.Properties{AppID: long}}, "", "AppID is 256"},
		{"header key", journal.Entry{Headers: map[string]any{long: 1}}, "", "header key"},
		{"nested header key", journal.Entry{Headers: map[string]any{"a": []any{map[string]any{long: "v"}}}}, "", "header key"},
		{"headers near one frame", journal.Entry{Headers: map[string]any{"a": strings.Repeat("v", 120_000)}}, "", ""},
		{"headers over one frame", journal.Entry{Headers: map[string]any{"a": strings.Repeat("v", 131_000)}}, "", "one AMQP frame"},
		{"headers over a small frame", journal.Entry{Headers: map[string]any{"a": strings.Repeat("v", 5000)}}, "", "frame of 4096"},
		{"the stamp counts, in rk-stamp", journal.Entry{Headers: map[string]any{"a": strings.Repeat("v", amqpwire.DefaultFrameMax-70)}}, "m", "one AMQP frame"},
		{"the stamp counts, as message-id", journal.Entry{Headers: map[string]any{"a": strings.Repeat("v", amqpwire.DefaultFrameMax-70)}}, "", "one AMQP frame"},
		{"without the stamp it would fit", journal.Entry{Headers: map[string]any{"a": strings.Repeat("v", amqpwire.DefaultFrameMax-70-250)}}, "", ""},
		{"delivery mode 7", journal.Entry{Properties: journal.Properties{DeliveryMode: 7}}, "", "DeliveryMode 7"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			frame := amqpwire.DefaultFrameMax
			if strings.Contains(tc.name, "small frame") {
				frame = 4096
			}
			if tc.e.Stream == "" && tc.name != "empty stream" {
				tc.e.Stream = "s"
			}
			tc.e.Properties.MessageID = tc.msgID
			err := checkWire(&tc.e, 240, frame)
			if tc.bad == "" {
				if err != nil {
					t.Fatalf("checkWire: %v", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.bad) {
				t.Fatalf("checkWire: %v, want %q", err, tc.bad)
			}
		})
	}
}

// TestInvalidMessages: Publish refuses what can never be sent and journals nothing; messages at
// the limits are accepted and delivered (the longest stream, 255-byte routing keys with a stream
// of their own, headers close to one frame, the largest expiration, a message-id of the caller's).
func TestInvalidMessages(t *testing.T) {
	url := testbroker.SharedURL(t)
	s := newSetup(t, url, "classic", nil)
	longKey := strings.Repeat("r", 255)
	s.topo.Bindings = append(s.topo.Bindings, topology.Binding{Queue: s.queue, Exchange: s.exchange, Key: longKey})
	p := mustNew(t, s.config(t, url, t.TempDir()))
	ctx := context.Background()
	long := strings.Repeat("z", 256)
	for name, m := range map[string]Message{
		"routing key":    {RoutingKey: long},
		"exchange":       {Exchange: long},
		"correlation id": {CorrelationID: long},
		"message id":     {MessageID: long},
		"header key":     {Headers: amqp.Table{long: "v"}},
		"headers":        {Headers: amqp.Table{"big": strings.Repeat("v", 140_000)}},
		"expiration":     {Expiration: "1.5"},
		"expiration max": {Expiration: "315360000001"},
		"delivery mode":  {DeliveryMode: 3},
		"stream":         {Stream: strings.Repeat("s", protocol.MaxStreamLen+1)},
		"default stream": {RoutingKey: longKey}, // exchange + "/" + 255 bytes: over MaxStreamLen
		"rk- header":     {Headers: amqp.Table{"rk-seq": int64(1)}},
		"stamp-like id":  {MessageID: "rk2:x:1:y:1"},
	} {
		if m.Exchange == "" {
			m.Exchange = s.exchange
		}
		if m.RoutingKey == "" {
			m.RoutingKey = s.key
		}
		m.Body = []byte(name)
		_, err := p.Publish(ctx, m)
		if !errors.Is(err, ErrInvalidMessage) {
			t.Errorf("%s: Publish = %v, want ErrInvalidMessage", name, err)
		}
	}
	if st := p.Stats(); st.Accepted != 0 || st.Journal.Pending != 0 {
		t.Fatalf("invalid messages were journaled: %+v", st)
	}

	l := newLedger()
	for name, m := range map[string]Message{
		"longest stream":         {RoutingKey: s.key, Stream: strings.Repeat("s", protocol.MaxStreamLen)},
		"255-byte key":           {RoutingKey: longKey, Stream: "long-keys"},
		"caller's message-id":    {RoutingKey: s.key, MessageID: "order-17", Headers: amqp.Table{"tenant": "acme"}},
		"headers near one frame": {RoutingKey: s.key, Headers: amqp.Table{"big": strings.Repeat("v", 120_000)}},
		"largest expiration":     {RoutingKey: s.key, Expiration: "315360000000"},
	} {
		m.Exchange, m.Body = s.exchange, []byte(name)
		r, err := p.Publish(ctx, m)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		l.add(r.Stamp())
	}
	flush(t, p, 30*time.Second)
	check(t, url, s.queue, l, checkOpts{})
}

// TestInvalidEntryParkedUnsent: entries that can never be sent, put into the journal through its
// API, are parked without being sent and without costing the connection; the entries around them
// are delivered in order. Before, each one closed the connection on every attempt, forever, and
// held everything behind it.
func TestInvalidEntryParkedUnsent(t *testing.T) {
	url := testbroker.SharedURL(t)
	s := newSetup(t, url, "classic", nil)
	dir := t.TempDir()
	cfg := s.config(t, url, dir)
	j := openJournal(t, cfg.JournalPath, cfg.Source)
	long := strings.Repeat("z", 300)
	entries := []*journal.Entry{
		{Exchange: s.exchange, RoutingKey: s.key, Stream: "s", Body: []byte("ok-1")},
		{Exchange: s.exchange, RoutingKey: long, Stream: "s", Body: []byte("bad key")},
		{Exchange: s.exchange, RoutingKey: s.key, Stream: "s", Body: []byte("bad header"), Headers: map[string]any{"big": strings.Repeat("v", 140_000)}},
		{Exchange: s.exchange, RoutingKey: s.key, Stream: "s", Body: []byte("bad expiration"), Properties: journal.Properties{Expiration: "soon"}},
		{Exchange: s.exchange, RoutingKey: s.key, Stream: "s", Body: []byte("ok-2")},
	}
	if err := j.AppendBatch(context.Background(), entries); err != nil {
		t.Fatal(err)
	}
	if err := j.Close(); err != nil {
		t.Fatal(err)
	}

	m := &metrics.Memory{}
	var mu sync.Mutex
	var parked []*ParkedError
	cfg.Metrics = m
	cfg.OnParked = func(pe *ParkedError) {
		mu.Lock()
		defer mu.Unlock()
		parked = append(parked, pe)
	}
	p := mustNew(t, cfg)
	flush(t, p, 20*time.Second)
	testutil.Eventually(t, 5*time.Second, "OnParked called 3 times", func() bool { mu.Lock(); defer mu.Unlock(); return len(parked) >= 3 })
	mu.Lock()
	defer mu.Unlock()
	if len(parked) != 3 {
		t.Fatalf("%d parked, want 3: %v", len(parked), parked)
	}
	for i, pe := range parked {
		if !pe.Invalid || !errors.Is(pe, ErrInvalidMessage) || !errors.Is(pe, ErrParked) || pe.Seq != int64(i+2) {
			t.Errorf("parked %d: %v (invalid %v)", i, pe, pe.Invalid)
		}
	}
	if n := m.Get(MetricReconnects); n != 0 {
		t.Errorf("%v reconnects: an invalid entry must not cost the connection", n)
	}
	var reasons []string
	if err := p.Journal().Parked(context.Background(), func(pe journal.ParkedEntry) error {
		reasons = append(reasons, pe.Reason)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if len(reasons) != 3 || !strings.Contains(reasons[0], "routing key is 300 bytes") ||
		!strings.Contains(reasons[1], "one AMQP frame") || !strings.Contains(reasons[2], "expiration") {
		t.Errorf("parked reasons: %q", reasons)
	}
	l := newLedger()
	l.add(stampOf(p, "s", 1))
	l.add(stampOf(p, "s", 5))
	check(t, url, s.queue, l, checkOpts{})
}

func stampOf(p *Publisher, stream string, seq int64) protocol.Stamp {
	return protocol.Stamp{Source: p.cfg.Source, Epoch: p.Journal().Epoch(), Stream: stream, Seq: seq}
}

// TestPreconditionFailedParksAtOnce: a 406 on basic.publish (here a user-id other than the
// connection's user, which Publish cannot check) is about the message itself: it is parked at its
// first failure, and the messages behind it go on. Before, it was retried MaxAttempts times with
// backoffs in between while everything behind it waited.
func TestPreconditionFailedParksAtOnce(t *testing.T) {
	url := testbroker.SharedURL(t)
	s := newSetup(t, url, "classic", nil)
	cfg := s.config(t, url, t.TempDir()) // MaxAttempts 1000
	p := mustNew(t, cfg)
	ctx := context.Background()
	bad, err := p.Publish(ctx, Message{Exchange: s.exchange, RoutingKey: s.key, UserID: "not-guest", Body: []byte("bad")})
	if err != nil {
		t.Fatal(err)
	}
	l := newLedger()
	for i := range 20 {
		r, err := p.Publish(ctx, Message{Exchange: s.exchange, RoutingKey: s.key, Body: fmt.Appendf(nil, "m%d", i)})
		if err != nil {
			t.Fatal(err)
		}
		l.add(r.Stamp())
	}
	flush(t, p, 10*time.Second)
	var pe *ParkedError
	if err := waitErr(t, bad); !errors.As(err, &pe) || pe.ReplyCode != 406 || pe.Attempts != 1 {
		t.Fatalf("user-id mismatch: %v, want parked after one 406", err)
	}
	check(t, url, s.queue, l, checkOpts{})
}

// BenchmarkCheckWire: the per-message cost of the wire check, on Publish and again in the sender.
func BenchmarkCheckWire(b *testing.B) {
	for _, bc := range []struct {
		name string
		e    journal.Entry
	}{
		{"no-headers", journal.Entry{Exchange: "orders", RoutingKey: "orders.created", Stream: "orders/orders.created",
			Properties: journal.Properties{ContentType: "application/json", DeliveryMode: 2}}},
		{"4-headers", journal.Entry{Exchange: "orders", RoutingKey: "orders.created", Stream: "orders/orders.created",
			Properties: journal.Properties{ContentType: "application/json", DeliveryMode: 2, Expiration: "60000"},
			Headers:    map[string]any{"tenant": "acme", "attempt": int32(1), "trace-id": "4bf92f3577b34da6a3ce929d0e0e4736", "tags": []any{"a", "b"}}}},
	} {
		b.Run(bc.name, func(b *testing.B) {
			for b.Loop() {
				if err := checkWire(&bc.e, 60, amqpwire.DefaultFrameMax); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// TestWireSizeExact pins checkWire's frame arithmetic to the broker. checkWire follows the AMQP
// spec, where frame_max counts the whole frame (7-byte header and frame-end included); RabbitMQ
// 3.10 enforces frame_max on the payload alone, 8 bytes more. So: the largest headers checkWire
// accepts are delivered; sent raw with amqp091-go, the same message 8 bytes larger still passes
// and 9 bytes larger is refused by RabbitMQ (501 frame_too_large). The check refuses nothing
// beyond those 8 bytes and lets through nothing the broker refuses.
func TestWireSizeExact(t *testing.T) {
	url := testbroker.SharedURL(t)
	s := newSetup(t, url, "classic", nil)
	p := mustNew(t, s.config(t, url, t.TempDir()))
	msg := func(n int) Message {
		return Message{Exchange: s.exchange, RoutingKey: s.key, Stream: "s", MessageID: "m", ContentType: "text/plain",
			Headers: amqp.Table{"big": strings.Repeat("v", n), "n": int32(7), "list": []any{"a", int64(1)}}, Body: []byte("x")}
	}
	// Publish counts the stamp (in rk-stamp, as the caller set a message-id) with a 19-digit seq.
	bound := protocol.Stamp{Source: p.cfg.Source, Epoch: p.j.Epoch(), Stream: "s", Seq: math.MaxInt64}
	// The largest n checkWire accepts: start from the size it reports for a small n.
	size := func(n int) int {
		m := msg(n)
		e, err := p.entry(&m)
		if err != nil {
			t.Fatal(err)
		}
		if err := checkWire(e, bound.EncodedLen(), 1<<30); err != nil {
			t.Fatal(err)
		}
		over := *e
		if err := checkWire(&over, bound.EncodedLen(), 1); err == nil {
			t.Fatal("no size reported")
		} else if _, err := fmt.Sscanf(err.Error()[strings.Index(err.Error(), "take ")+5:], "%d", &n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	n := 1000 + amqpwire.DefaultFrameMax - size(1000)
	if _, err := p.Publish(context.Background(), msg(n+1)); !errors.Is(err, ErrInvalidMessage) {
		t.Fatalf("one byte over the frame: %v, want ErrInvalidMessage", err)
	}
	r, err := p.Publish(context.Background(), msg(n))
	if err != nil {
		t.Fatalf("at the frame limit: %v", err)
	}
	l := newLedger()
	l.add(r.Stamp())
	flush(t, p, 20*time.Second)
	check(t, url, s.queue, l, checkOpts{})

	// What the sender sends for a 19-digit seq, raw, 8 and 9 bytes larger: the broker takes the
	// first, not the second.
	raw := func(extra int) *amqp.Error {
		conn, err := amqp.Dial(url)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		closed := conn.NotifyClose(make(chan *amqp.Error, 1))
		ch, err := conn.Channel()
		if err != nil {
			t.Fatal(err)
		}
		if err := ch.Confirm(false); err != nil {
			t.Fatal(err)
		}
		st := r.Stamp()
		st.Seq = math.MaxInt64 - int64(extra)
		m := msg(n + extra)
		m.Headers[protocol.HeaderStamp] = st.String()
		if st.EncodedLen() != bound.EncodedLen() {
			t.Fatalf("stamp of %d bytes, want %d", st.EncodedLen(), bound.EncodedLen())
		}
		dc, err := ch.PublishWithDeferredConfirm(s.exchange, s.key, true, false, amqp.Publishing{Headers: m.Headers,
			MessageId: "m", ContentType: "text/plain", DeliveryMode: amqp.Persistent, Body: m.Body})
		if err != nil {
			t.Fatal(err)
		}
		select {
		case e := <-closed:
			return e
		case <-dc.Done():
			return nil
		case <-time.After(10 * time.Second):
			t.Fatal("no confirm and no close")
		}
		return nil
	}
	if e := raw(8); e != nil {
		t.Fatalf("8 bytes over checkWire's limit, the broker refused: %v (checkWire under-counts)", e)
	}
	if e := raw(9); e == nil || e.Code != amqp.FrameError || !strings.Contains(e.Reason, "frame_too_large") {
		t.Fatalf("9 bytes over checkWire's limit: %v, want 501 frame_too_large (checkWire over-counts)", e)
	}
}
