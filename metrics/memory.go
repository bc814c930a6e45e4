package metrics

import (
	"maps"
	"strings"
	"sync"
)

// Memory keeps the latest value of every counter and gauge, and the count and sum of every
// observation, in memory, keyed by Key(name, labels...) (name{k="v"}). It suits tests, examples and
// expvar-style status pages. It is not a Claimer.
type Memory struct {
	mu     sync.Mutex
	values map[string]float64
}

func (m *Memory) update(key string, f func(float64) float64) {
	m.mu.Lock()
	if m.values == nil {
		m.values = map[string]float64{}
	}
	m.values[key] = f(m.values[key])
	m.mu.Unlock()
}

// Add implements Recorder.
func (m *Memory) Add(name string, delta float64, labels ...Label) {
	m.update(Key(name, labels...), func(v float64) float64 { return v + delta })
}

// Set implements Recorder.
func (m *Memory) Set(name string, value float64, labels ...Label) {
	m.update(Key(name, labels...), func(float64) float64 { return value })
}

// Observe implements Recorder: it accumulates name+"_sum" and name+"_count" (with the same labels).
func (m *Memory) Observe(name string, value float64, labels ...Label) {
	m.update(Key(name+"_sum", labels...), func(v float64) float64 { return v + value })
	m.update(Key(name+"_count", labels...), func(v float64) float64 { return v + 1 })
}

// Get returns the sum of a counter or gauge over all its label sets (0 when never reported): for
// a metric reported by one instance, its value.
func (m *Memory) Get(name string) float64 {
	m.mu.Lock()
	defer m.mu.Unlock()
	var sum float64
	for k, v := range m.values {
		if k == name || strings.HasPrefix(k, name+"{") {
			sum += v
		}
	}
	return sum
}

// GetWith returns the value of one series: name with exactly labels (0 when never reported).
func (m *Memory) GetWith(name string, labels ...Label) float64 {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.values[Key(name, labels...)]
}

// Snapshot returns a copy of every value, keyed by Key.
func (m *Memory) Snapshot() map[string]float64 {
	m.mu.Lock()
	defer m.mu.Unlock()
	return maps.Clone(m.values)
}
