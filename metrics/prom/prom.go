// Package prom adapts metrics.Recorder to Prometheus. It is a separate package so that the core
// packages do not import client_golang.
//
//	reg := prometheus.NewRegistry()
//	pub, _ := publisher.New(publisher.Config{..., Metrics: prom.New(reg)})
//
// Counters, gauges and summaries are created on first use with the rabbitkit metric name; names that
// end in "_seconds" become summaries, names ending in "_total" counters.
package prom

import (
	"strings"
	"sync"

	"github.com/prometheus/client_golang/prometheus"
)

// Recorder implements metrics.Recorder on a Prometheus registerer.
type Recorder struct {
	reg prometheus.Registerer

	mu       sync.RWMutex
	counters map[string]prometheus.Counter
	gauges   map[string]prometheus.Gauge
	sums     map[string]prometheus.Summary
}

// New returns a Recorder registering its collectors on reg (prometheus.DefaultRegisterer when nil).
func New(reg prometheus.Registerer) *Recorder {
	if reg == nil {
		reg = prometheus.DefaultRegisterer
	}
	return &Recorder{
		reg:      reg,
		counters: map[string]prometheus.Counter{},
		gauges:   map[string]prometheus.Gauge{},
		sums:     map[string]prometheus.Summary{},
	}
}

// Add implements metrics.Recorder.
func (r *Recorder) Add(name string, delta float64) {
	if delta < 0 {
		return // counters only go up; a negative delta is a bug in the caller, not worth a panic
	}
	getOrCreate(r, r.counters, name, func() prometheus.Counter {
		return prometheus.NewCounter(prometheus.CounterOpts{Name: name, Help: help(name)})
	}).Add(delta)
}

// Set implements metrics.Recorder.
func (r *Recorder) Set(name string, value float64) {
	getOrCreate(r, r.gauges, name, func() prometheus.Gauge {
		return prometheus.NewGauge(prometheus.GaugeOpts{Name: name, Help: help(name)})
	}).Set(value)
}

// Observe implements metrics.Recorder.
func (r *Recorder) Observe(name string, value float64) {
	getOrCreate(r, r.sums, name, func() prometheus.Summary {
		return prometheus.NewSummary(prometheus.SummaryOpts{
			Name: name, Help: help(name),
			Objectives: map[float64]float64{0.5: 0.05, 0.9: 0.01, 0.99: 0.001},
		})
	}).Observe(value)
}

func getOrCreate[T prometheus.Collector](r *Recorder, m map[string]T, name string, mk func() T) T {
	r.mu.RLock()
	c, ok := m[name]
	r.mu.RUnlock()
	if ok {
		return c
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if c, ok := m[name]; ok {
		return c
	}
	c = mk()
	if err := r.reg.Register(c); err != nil {
		if are, ok := err.(prometheus.AlreadyRegisteredError); ok {
			if existing, ok := are.ExistingCollector.(T); ok {
				c = existing
			}
		}
	}
	m[name] = c
	return c
}

func help(name string) string {
	return "rabbitkit " + strings.ReplaceAll(strings.TrimPrefix(name, "rabbitkit_"), "_", " ")
}
