package tracing_test

import (
	"io"
	"log/slog"
	"os"
	"testing"

	"go.opentelemetry.io/otel/attribute"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.uber.org/goleak"

	"github.com/rabbitkit/rabbitkit/internal/testbroker"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m, testbroker.IgnoreProxyLeaks()...)
}

func quietLogger() *slog.Logger {
	if os.Getenv("RABBITKIT_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

// newProvider returns an SDK TracerProvider that records every span in memory.
func newProvider(t testing.TB) (*sdktrace.TracerProvider, *tracetest.SpanRecorder) {
	t.Helper()
	sr := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(sr), sdktrace.WithSampler(sdktrace.AlwaysSample()))
	return tp, sr
}

// attrs returns a span's attributes by key.
func attrs(s sdktrace.ReadOnlySpan) map[attribute.Key]attribute.Value {
	m := make(map[attribute.Key]attribute.Value)
	for _, kv := range s.Attributes() {
		m[kv.Key] = kv.Value
	}
	return m
}

// wantAttrs fails t unless span s has every attribute of want (values compared by type and value).
func wantAttrs(t *testing.T, s sdktrace.ReadOnlySpan, want map[string]any) {
	t.Helper()
	got := attrs(s)
	for k, v := range want {
		g, ok := got[attribute.Key(k)]
		if !ok {
			t.Errorf("span %q: no attribute %s (have %v)", s.Name(), k, s.Attributes())
			continue
		}
		var w attribute.Value
		switch x := v.(type) {
		case string:
			w = attribute.StringValue(x)
		case int:
			w = attribute.Int64Value(int64(x))
		case int64:
			w = attribute.Int64Value(x)
		case bool:
			w = attribute.BoolValue(x)
		default:
			t.Fatalf("wantAttrs: type %T", v)
		}
		if g != w {
			t.Errorf("span %q: %s = %s (%s), want %s (%s)", s.Name(), k, g.String(), g.Type(), w.String(), w.Type())
		}
	}
}

// byName returns the ended spans named name.
func byName(sr *tracetest.SpanRecorder, name string) []sdktrace.ReadOnlySpan {
	var out []sdktrace.ReadOnlySpan
	for _, s := range sr.Ended() {
		if s.Name() == name {
			out = append(out, s)
		}
	}
	return out
}
