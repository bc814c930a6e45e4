// Package prom adapts metrics.Recorder to Prometheus. It is a separate package so that the core
// packages do not import client_golang.
//
//	reg := prometheus.NewRegistry()
//	pub, _ := publisher.New(publisher.Config{..., Metrics: prom.New(reg)})
//	http.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
//
// Collectors are created on first use with the rabbitkit metric name and the label names of that
// first use: Add makes a CounterVec, Set a GaugeVec, Observe a HistogramVec with Buckets (1 ms to
// 60 s). A later report of the same name with other label names is dropped (a bug in the caller,
// not worth a panic). New also registers rabbitkit_build_info{version,goversion} = 1.
//
// The Recorder is a metrics.Claimer: claims are held per registry, shared by every Recorder on
// it, so two publishers or consumers reporting the same labels to one registry are refused.
package prom

import (
	"fmt"
	"runtime/debug"
	"slices"
	"strings"
	"sync"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/rabbitkit/rabbitkit/metrics"
)

// Buckets are the histogram buckets of every observation, in seconds: 1 ms to 60 s.
var Buckets = []float64{0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60}

// BuildInfo is the name of the gauge New registers: 1, labelled with rabbitkit's module version
// and the Go version.
const BuildInfo = "rabbitkit_build_info"

const modulePath = "github.com/rabbitkit/rabbitkit"

// Recorder implements metrics.Recorder and metrics.Claimer on a Prometheus registerer.
type Recorder struct {
	reg prometheus.Registerer

	mu       sync.RWMutex
	counters map[string]vec[*prometheus.CounterVec]
	gauges   map[string]vec[*prometheus.GaugeVec]
	hists    map[string]vec[*prometheus.HistogramVec]
}

type vec[V any] struct {
	v     V
	names []string // sorted
}

// New returns a Recorder registering its collectors on reg (prometheus.DefaultRegisterer when nil).
func New(reg prometheus.Registerer) *Recorder {
	if reg == nil {
		reg = prometheus.DefaultRegisterer
	}
	r := &Recorder{
		reg:      reg,
		counters: map[string]vec[*prometheus.CounterVec]{},
		gauges:   map[string]vec[*prometheus.GaugeVec]{},
		hists:    map[string]vec[*prometheus.HistogramVec]{},
	}
	version, goversion := buildVersions()
	r.Set(BuildInfo, 1, metrics.Label{Name: "version", Value: version}, metrics.Label{Name: "goversion", Value: goversion})
	return r
}

func buildVersions() (version, goversion string) {
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return "unknown", "unknown"
	}
	version = "(devel)"
	if bi.Main.Path == modulePath {
		version = bi.Main.Version
	}
	for _, d := range bi.Deps {
		if d.Path == modulePath {
			version = d.Version
			if d.Replace != nil && d.Replace.Version != "" {
				version = d.Replace.Version
			}
		}
	}
	if version == "" {
		version = "(devel)"
	}
	return version, bi.GoVersion
}

// Add implements metrics.Recorder.
func (r *Recorder) Add(name string, delta float64, labels ...metrics.Label) {
	if delta < 0 {
		return // counters only go up; a negative delta is a bug in the caller, not worth a panic
	}
	if c, vals := get(r, r.counters, name, labels, func(names []string) *prometheus.CounterVec {
		return prometheus.NewCounterVec(prometheus.CounterOpts{Name: name, Help: help(name)}, names)
	}); c != nil {
		c.WithLabelValues(vals...).Add(delta)
	}
}

// Set implements metrics.Recorder.
func (r *Recorder) Set(name string, value float64, labels ...metrics.Label) {
	if g, vals := get(r, r.gauges, name, labels, func(names []string) *prometheus.GaugeVec {
		return prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: name, Help: help(name)}, names)
	}); g != nil {
		g.WithLabelValues(vals...).Set(value)
	}
}

// Observe implements metrics.Recorder.
func (r *Recorder) Observe(name string, value float64, labels ...metrics.Label) {
	if h, vals := get(r, r.hists, name, labels, func(names []string) *prometheus.HistogramVec {
		return prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: name, Help: help(name), Buckets: Buckets}, names)
	}); h != nil {
		h.WithLabelValues(vals...).Observe(value)
	}
}

// get returns name's vector and labels' values in its label order, creating and registering the
// vector on first use; nil when labels do not have the vector's label names.
func get[V prometheus.Collector](r *Recorder, m map[string]vec[V], name string, labels []metrics.Label, mk func([]string) V) (V, []string) {
	byName := func(a, b metrics.Label) int { return strings.Compare(a.Name, b.Name) }
	ls := labels
	if !slices.IsSortedFunc(ls, byName) { // rabbitkit's own label sets come sorted: no copy
		ls = slices.Clone(labels)
		slices.SortFunc(ls, byName)
	}
	vals := make([]string, len(ls))
	for i, l := range ls {
		vals[i] = l.Value
	}
	r.mu.RLock()
	c, ok := m[name]
	r.mu.RUnlock()
	if !ok {
		names := make([]string, len(ls))
		for i, l := range ls {
			names[i] = l.Name
		}
		r.mu.Lock()
		if c, ok = m[name]; !ok {
			c = vec[V]{v: mk(names), names: names}
			if err := r.reg.Register(c.v); err != nil {
				if are, ok := err.(prometheus.AlreadyRegisteredError); ok {
					if existing, ok := are.ExistingCollector.(V); ok {
						c.v = existing
					}
				}
			}
			m[name] = c
		}
		r.mu.Unlock()
	}
	if !sameNames(c.names, ls) {
		var zero V
		return zero, nil
	}
	return c.v, vals
}

func sameNames(names []string, ls []metrics.Label) bool {
	if len(names) != len(ls) {
		return false
	}
	for i, l := range ls {
		if names[i] != l.Name {
			return false
		}
	}
	return true
}

func help(name string) string {
	return "rabbitkit " + strings.ReplaceAll(strings.TrimPrefix(name, "rabbitkit_"), "_", " ")
}

var (
	claimsMu sync.Mutex
	claims   = map[prometheus.Registerer]map[string]bool{}
)

// Claim implements metrics.Claimer: it fails with an error wrapping metrics.ErrIdentityInUse while
// another claim of the same label set is held on the same registry by any Recorder.
func (r *Recorder) Claim(labels ...metrics.Label) (func(), error) {
	key := metrics.Key("", labels...)
	claimsMu.Lock()
	defer claimsMu.Unlock()
	held := claims[r.reg]
	if held == nil {
		held = map[string]bool{}
		claims[r.reg] = held
	}
	if held[key] {
		return nil, fmt.Errorf("%w: %s", metrics.ErrIdentityInUse, key)
	}
	held[key] = true
	var once sync.Once
	return func() {
		once.Do(func() {
			claimsMu.Lock()
			defer claimsMu.Unlock()
			delete(claims[r.reg], key)
			if len(claims[r.reg]) == 0 {
				delete(claims, r.reg)
			}
		})
	}, nil
}
