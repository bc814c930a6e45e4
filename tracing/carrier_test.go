package tracing_test

import (
	"context"
	"math"
	"slices"
	"strings"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"

	"github.com/rabbitkit/rabbitkit/consumer"
	"github.com/rabbitkit/rabbitkit/tracing"
)

const validTP = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"

func TestCarrierGetSetKeys(t *testing.T) {
	c := tracing.HeaderCarrier(amqp.Table{
		"s": "text", "b": []byte("bytes"), "i": int32(7), "t": amqp.Table{"x": "y"},
		"a": []any{"z"}, "n": nil, "f": 1.5, "d": amqp.Decimal{Scale: 1, Value: 5}, "ts": time.Unix(0, 0), "bool": true,
	})
	for k, want := range map[string]string{"s": "text", "b": "bytes", "i": "", "t": "", "a": "", "n": "", "f": "", "d": "", "ts": "", "bool": "", "missing": ""} {
		if got := c.Get(k); got != want {
			t.Errorf("Get(%q) = %q, want %q", k, got, want)
		}
	}
	if got, want := c.Keys(), []string{"a", "b", "bool", "d", "f", "i", "n", "s", "t", "ts"}; !slices.Equal(got, want) {
		t.Errorf("Keys() = %q, want %q", got, want)
	}
	c.Set("traceparent", validTP)
	if c["traceparent"] != validTP {
		t.Errorf("Set stored %#v", c["traceparent"])
	}

	var nilc tracing.HeaderCarrier
	nilc.Set("k", "v") // must not panic
	if nilc.Get("k") != "" || len(nilc.Keys()) != 0 {
		t.Error("a nil carrier is not empty")
	}
}

// A traceparent sent as an AMQP byte array is read like a string.
func TestCarrierBytesTraceparent(t *testing.T) {
	ctx := propagation.TraceContext{}.Extract(context.Background(), tracing.HeaderCarrier(amqp.Table{"traceparent": []byte(validTP)}))
	sc := trace.SpanContextFromContext(ctx)
	if !sc.IsValid() || sc.TraceID().String() != "4bf92f3577b34da6a3ce929d0e0e4736" || !sc.IsRemote() {
		t.Fatalf("extracted %+v", sc)
	}
}

// fuzzValue turns fuzz input into a header value of one of the types an AMQP table can hold, or
// of a type it cannot.
func fuzzValue(kind uint8, s string) any {
	switch kind % 16 {
	case 0:
		return s
	case 1:
		return []byte(s)
	case 2:
		return int32(len(s))
	case 3:
		return int64(-len(s))
	case 4:
		return float64(len(s)) / 3
	case 5:
		return math.NaN()
	case 6:
		return amqp.Table{"traceparent": s}
	case 7:
		return []any{s, []byte(s)}
	case 8:
		return nil
	case 9:
		return time.Unix(int64(len(s)), 0)
	case 10:
		return amqp.Decimal{Scale: uint8(len(s)), Value: int32(len(s))}
	case 11:
		return len(s) > 3
	case 12:
		return struct{ S string }{s} // not an AMQP type at all
	case 13:
		return &s
	case 14:
		return []string{s}
	}
	return map[string]any{"k": s}
}

// FuzzCarrier: whatever the headers hold, the carrier, the propagator and the handler wrapper
// never panic; a context is extracted only from a string or []byte traceparent that parses, and
// the handler runs exactly once.
func FuzzCarrier(f *testing.F) {
	f.Add("traceparent", validTP, uint8(0), "rojo=00f067aa0ba902b7", uint8(0))
	f.Add("traceparent", validTP, uint8(1), "rojo=00f067aa0ba902b7", uint8(1))
	f.Add("traceparent", "00-00000000000000000000000000000000-00f067aa0ba902b7-01", uint8(0), "", uint8(2))
	f.Add("traceparent", "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", uint8(0), "x=,,,", uint8(0))
	f.Add("traceparent", validTP+"-extra", uint8(0), strings.Repeat("a=b,", 40), uint8(0))
	f.Add("traceparent", validTP, uint8(12), "\x00\xff", uint8(13))
	f.Add("TraceParent", validTP, uint8(6), "", uint8(7))
	f.Add("other", "\xff\xfe", uint8(5), "", uint8(14))
	f.Fuzz(func(t *testing.T, key, tp string, tpKind uint8, ts string, tsKind uint8) {
		h := amqp.Table{key: fuzzValue(tpKind, tp), "tracestate": fuzzValue(tsKind, ts)}
		c := tracing.HeaderCarrier(h)
		_ = c.Keys()
		got := c.Get(key)
		switch v := h[key].(type) {
		case string:
			if got != v {
				t.Fatalf("Get = %q, want %q", got, v)
			}
		case []byte:
			if got != string(v) {
				t.Fatalf("Get = %q, want %q", got, v)
			}
		default:
			if got != "" {
				t.Fatalf("Get of a %T = %q, want empty", v, got)
			}
		}

		sc := trace.SpanContextFromContext(propagation.TraceContext{}.Extract(context.Background(), c))
		if sc.IsValid() {
			if key != "traceparent" || (tpKind%16 != 0 && tpKind%16 != 1) {
				t.Fatalf("a context was extracted from %s of type %T", key, h[key])
			}
			if !strings.Contains(strings.ToLower(tp), sc.TraceID().String()) {
				t.Fatalf("trace id %s is not in %q", sc.TraceID(), tp)
			}
		}

		calls := 0
		m := &consumer.Message{Headers: h, Exchange: "ex", RoutingKey: "rk", Attempt: 1}
		err := tracing.Handler(func(ctx context.Context, _ *consumer.Message) error {
			calls++
			if sc.IsValid() && trace.SpanContextFromContext(ctx).TraceID() != sc.TraceID() {
				t.Fatal("the handler's ctx is not in the message's trace")
			}
			return nil
		}, tracing.Options{Queue: "q"})(context.Background(), m)
		if err != nil || calls != 1 {
			t.Fatalf("handler: err %v, %d calls", err, calls)
		}
		if len(h) != 2 {
			t.Fatalf("the handler wrapper changed the delivery's headers: %v", h)
		}
	})
}
