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
	var r metrics.Recorder = New(reg)
	r.Add("rabbitkit_test_published_total", 2)
	r.Add("rabbitkit_test_published_total", 3)
	r.Set("rabbitkit_test_depth", 7)
	r.Observe("rabbitkit_test_latency_seconds", 0.25)

	// A second recorder on the same registry shares the collectors instead of failing.
	New(reg).Add("rabbitkit_test_published_total", 1)

	require.NoError(t, testutil.GatherAndCompare(reg, strings.NewReader(`
# HELP rabbitkit_test_depth rabbitkit test depth
# TYPE rabbitkit_test_depth gauge
rabbitkit_test_depth 7
# HELP rabbitkit_test_published_total rabbitkit test published total
# TYPE rabbitkit_test_published_total counter
rabbitkit_test_published_total 6
`), "rabbitkit_test_depth", "rabbitkit_test_published_total"))
	n, err := testutil.GatherAndCount(reg, "rabbitkit_test_latency_seconds")
	require.NoError(t, err)
	require.Equal(t, 1, n)
}
