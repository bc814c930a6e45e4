package prom

import (
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/require"

	"github.com/rabbitkit/rabbitkit/metrics"
)

func TestRecorder(t *testing.T) {
	reg := prometheus.NewRegistry()
	var r metrics.Recorder = metrics.With(New(reg), metrics.Label{Name: "client", Value: "a"})
	r.Add("rabbitkit_test_published_total", 2)
	r.Add("rabbitkit_test_published_total", 3)
	r.Set("rabbitkit_test_depth", 7)
	r.Observe("rabbitkit_test_latency_seconds", 0.25)
	r.Add("rabbitkit_test_published_total", 9, metrics.Label{Name: "other", Value: "x"}) // other label names: dropped

	// A second recorder on the same registry shares the collectors instead of failing.
	metrics.With(New(reg), metrics.Label{Name: "client", Value: "b"}).Add("rabbitkit_test_published_total", 1)

	require.NoError(t, testutil.GatherAndCompare(reg, strings.NewReader(`
# HELP rabbitkit_test_depth rabbitkit test depth
# TYPE rabbitkit_test_depth gauge
rabbitkit_test_depth{client="a"} 7
# HELP rabbitkit_test_published_total rabbitkit test published total
# TYPE rabbitkit_test_published_total counter
rabbitkit_test_published_total{client="a"} 5
rabbitkit_test_published_total{client="b"} 1
`), "rabbitkit_test_depth", "rabbitkit_test_published_total"))
	n, err := testutil.GatherAndCount(reg, "rabbitkit_test_latency_seconds")
	require.NoError(t, err)
	require.Equal(t, 1, n)
	mfs, err := reg.Gather()
	require.NoError(t, err)
	var sawHist, sawBuild bool
	for _, mf := range mfs {
		switch mf.GetName() {
		case "rabbitkit_test_latency_seconds":
			sawHist = mf.GetMetric()[0].GetHistogram() != nil
			require.Len(t, mf.GetMetric()[0].GetHistogram().GetBucket(), len(Buckets))
		case BuildInfo:
			sawBuild = len(mf.GetMetric()[0].GetLabel()) == 2
		}
	}
	require.True(t, sawHist, "latencies are histograms")
	require.True(t, sawBuild, "rabbitkit_build_info{version,goversion}")
}

func TestClaim(t *testing.T) {
	reg := prometheus.NewRegistry()
	a := metrics.With(New(reg), metrics.Label{Name: "client", Value: "x"})
	b := metrics.With(New(reg), metrics.Label{Name: "client", Value: "x"})
	relA, err := metrics.Claim(a, metrics.Label{Name: "queue", Value: "q"})
	require.NoError(t, err)
	_, err = metrics.Claim(b, metrics.Label{Name: "queue", Value: "q"})
	require.ErrorIs(t, err, metrics.ErrIdentityInUse)
	relOther, err := metrics.Claim(b, metrics.Label{Name: "queue", Value: "other"})
	require.NoError(t, err, "another label set is another identity")
	// Another registry is another place.
	relC, err := metrics.Claim(metrics.With(New(prometheus.NewRegistry()), metrics.Label{Name: "client", Value: "x"}), metrics.Label{Name: "queue", Value: "q"})
	require.NoError(t, err)
	relA()
	relA() // idempotent
	relB, err := metrics.Claim(b, metrics.Label{Name: "queue", Value: "q"})
	require.NoError(t, err, "released on close")
	relB()
	relOther()
	relC()
}
