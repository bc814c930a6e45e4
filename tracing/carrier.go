package tracing

import (
	"slices"

	amqp "github.com/rabbitmq/amqp091-go"
	"go.opentelemetry.io/otel/propagation"
)

// HeaderCarrier adapts AMQP headers to propagation.TextMapCarrier. Keys are matched exactly (the
// W3C propagator uses lower-case "traceparent" and "tracestate", as other AMQP instrumentations
// do). Get returns string values, and []byte values (AMQP byte arrays) as strings; values of any
// other type, a missing key and a nil table give "". Set on a nil table does nothing. No method
// panics, whatever the table holds.
type HeaderCarrier amqp.Table

var _ propagation.TextMapCarrier = HeaderCarrier(nil)

// Get returns the value of key as a string, or "" if it is absent or neither a string nor []byte.
func (c HeaderCarrier) Get(key string) string {
	switch v := c[key].(type) {
	case string:
		return v
	case []byte:
		return string(v)
	}
	return ""
}

// Set stores value under key (a string header). It does nothing on a nil table.
func (c HeaderCarrier) Set(key, value string) {
	if c != nil {
		c[key] = value
	}
}

// Keys returns the header names, sorted.
func (c HeaderCarrier) Keys() []string {
	keys := make([]string, 0, len(c))
	for k := range c {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}
