// Package metrics is the small interface through which publisher and consumer report counters,
// gauges and observations. Core packages depend only on Recorder; adapters (Prometheus, expvar,
// OpenTelemetry) live outside them so that using rabbitkit does not pull a metrics stack in.
//
// # Concurrency
//
// Recorder methods are called from rabbitkit's own goroutines, often on hot paths. Implementations
// must be safe for concurrent use and must not block.
package metrics

import (
	"maps"
	"sync"
)

// Recorder receives metrics. Names are stable, snake_case and documented next to the package that
// emits them (publisher.Metric*, consumer.Metric*).
type Recorder interface {
	// Add adds delta to a monotonic counter.
	Add(name string, delta float64)
	// Set sets a gauge.
	Set(name string, value float64)
	// Observe records one observation of a distribution (latencies are in seconds).
	Observe(name string, value float64)
}

// Nop discards everything. It is the default Recorder.
type Nop struct{}

// Add implements Recorder.
func (Nop) Add(string, float64) {}

// Set implements Recorder.
func (Nop) Set(string, float64) {}

// Observe implements Recorder.
func (Nop) Observe(string, float64) {}

// OrNop returns r, or Nop when r is nil.
func OrNop(r Recorder) Recorder {
	if r == nil {
		return Nop{}
	}
	return r
}

// Memory keeps the latest value of every counter and gauge, and the count and sum of every
// observation, in memory. It suits tests, examples and expvar-style status pages.
type Memory struct {
	mu     sync.Mutex
	values map[string]float64
}

// Add implements Recorder.
func (m *Memory) Add(name string, delta float64) {
	m.mu.Lock()
	if m.values == nil {
		m.values = map[string]float64{}
	}
	m.values[name] += delta
	m.mu.Unlock()
}

// Set implements Recorder.
func (m *Memory) Set(name string, value float64) {
	m.mu.Lock()
	if m.values == nil {
		m.values = map[string]float64{}
	}
	m.values[name] = value
	m.mu.Unlock()
}

// Observe implements Recorder: it accumulates name+"_sum" and name+"_count".
func (m *Memory) Observe(name string, value float64) {
	m.mu.Lock()
	if m.values == nil {
		m.values = map[string]float64{}
	}
	m.values[name+"_sum"] += value
	m.values[name+"_count"]++
	m.mu.Unlock()
}

// Get returns the current value of a counter or gauge (0 when never reported).
func (m *Memory) Get(name string) float64 {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.values[name]
}

// Snapshot returns a copy of every value.
func (m *Memory) Snapshot() map[string]float64 {
	m.mu.Lock()
	defer m.mu.Unlock()
	return maps.Clone(m.values)
}
