// Package metrics is the small interface through which publisher and consumer report counters,
// gauges and observations. Core packages depend only on Recorder; adapters (Prometheus, expvar,
// OpenTelemetry) live outside them so that using rabbitkit does not pull a metrics stack in.
//
// # Labels
//
// Every value may carry labels. rabbitkit uses bounded labels only, whose values are fixed by
// configuration or topology (an instance's name, a queue, an exchange), never a source, a stream
// or a sequence number: a label's every value is a time series in the monitoring system. With
// returns a view of a Recorder that adds labels to everything reported through it.
//
// # Identity
//
// A Recorder that exports to a shared place (a Prometheus registry) implements Claimer: publisher
// and consumer claim their label set when they start and release it when they close, so that two
// instances that would report the same series fail to start (ErrIdentityInUse) instead of being
// silently merged.
//
// # Concurrency
//
// Recorder methods are called from rabbitkit's own goroutines, often on hot paths. Implementations
// must be safe for concurrent use and must not block.
package metrics

import (
	"errors"
	"fmt"
	"slices"
	"strings"
)

// Label is one name="value" pair attached to a metric.
type Label struct {
	Name, Value string
}

// Recorder receives metrics. Names are stable, snake_case and documented next to the package that
// emits them (publisher.Metric*, consumer.Metric*). A name is always reported with the same set of
// label names.
type Recorder interface {
	// Add adds delta to a monotonic counter.
	Add(name string, delta float64, labels ...Label)
	// Set sets a gauge.
	Set(name string, value float64, labels ...Label)
	// Observe records one observation of a distribution (latencies are in seconds).
	Observe(name string, value float64, labels ...Label)
}

// ErrIdentityInUse is returned by Claimer.Claim (and so by publisher.New and consumer.New) when
// another live instance already reports with the same labels to the same place.
var ErrIdentityInUse = errors.New("metrics: another instance reports with the same labels")

// Claimer is implemented by Recorders that can tell two instances apart. Claim reserves the label
// set labels (in any order) until release is called; it fails with an error wrapping
// ErrIdentityInUse while another claim of the same set is held.
type Claimer interface {
	Claim(labels ...Label) (release func(), err error)
}

// Claim claims labels on r when r (or the Recorder a With view wraps) is a Claimer; otherwise it
// succeeds and release does nothing.
func Claim(r Recorder, labels ...Label) (release func(), err error) {
	if c, ok := r.(Claimer); ok {
		return c.Claim(labels...)
	}
	return func() {}, nil
}

// Key returns the canonical form of a label set: name{a="1",b="2"} with the labels sorted by
// name, or name alone without labels. Memory keys its values by it; Claimers may key claims by it.
func Key(name string, labels ...Label) string {
	if len(labels) == 0 {
		return name
	}
	ls := slices.Clone(labels)
	slices.SortFunc(ls, func(a, b Label) int { return strings.Compare(a.Name, b.Name) })
	var b strings.Builder
	b.WriteString(name)
	b.WriteByte('{')
	for i, l := range ls {
		if i > 0 {
			b.WriteByte(',')
		}
		fmt.Fprintf(&b, "%s=%q", l.Name, l.Value)
	}
	b.WriteByte('}')
	return b.String()
}

// With returns a Recorder that adds labels to every value reported through it, before the
// caller's own labels. Claims through it claim labels plus the caller's.
func With(r Recorder, labels ...Label) Recorder {
	r = OrNop(r)
	if len(labels) == 0 {
		return r
	}
	if v, ok := r.(*view); ok {
		return &view{r: v.r, labels: append(slices.Clone(v.labels), labels...)}
	}
	return &view{r: r, labels: slices.Clone(labels)}
}

type view struct {
	r      Recorder
	labels []Label
}

func (v *view) join(labels []Label) []Label {
	if len(labels) == 0 {
		return v.labels
	}
	return append(slices.Clone(v.labels), labels...)
}

func (v *view) Add(name string, delta float64, labels ...Label) {
	v.r.Add(name, delta, v.join(labels)...)
}

func (v *view) Set(name string, value float64, labels ...Label) {
	v.r.Set(name, value, v.join(labels)...)
}

func (v *view) Observe(name string, value float64, labels ...Label) {
	v.r.Observe(name, value, v.join(labels)...)
}

func (v *view) Claim(labels ...Label) (func(), error) {
	return Claim(v.r, v.join(labels)...)
}

// Nop discards everything. It is the default Recorder.
type Nop struct{}

// Add implements Recorder.
func (Nop) Add(string, float64, ...Label) {}

// Set implements Recorder.
func (Nop) Set(string, float64, ...Label) {}

// Observe implements Recorder.
func (Nop) Observe(string, float64, ...Label) {}

// OrNop returns r, or Nop when r is nil.
func OrNop(r Recorder) Recorder {
	if r == nil {
		return Nop{}
	}
	return r
}
