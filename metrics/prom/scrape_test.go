package prom_test

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cenkalti/backoff/v4"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/stretchr/testify/require"

	"github.com/rabbitkit/rabbitkit/consumer"
	"github.com/rabbitkit/rabbitkit/internal/testbroker"
	"github.com/rabbitkit/rabbitkit/metrics/prom"
	"github.com/rabbitkit/rabbitkit/publisher"
	"github.com/rabbitkit/rabbitkit/topology"
)

// scrape GETs /metrics and returns every sample line's value by its series (name{labels}).
func scrape(t *testing.T, url string) map[string]float64 {
	t.Helper()
	resp, err := http.Get(url)
	require.NoError(t, err)
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	out := map[string]float64{}
	for line := range strings.SplitSeq(string(body), "\n") {
		if line == "" || line[0] == '#' {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		var v float64
		_, err := fmt.Sscan(line[i+1:], &v)
		require.NoError(t, err, line)
		out[line[:i]] = v
	}
	return out
}

// A publisher and a consumer report to one private registry, scraped over HTTP after a known
// workload: a connection cut through the proxy and a message the handler always refuses (parked).
func TestScrapePublisherAndConsumer(t *testing.T) {
	testbroker.SkipShort(t)
	url := testbroker.SharedURL(t)
	px := testbroker.NewProxy(t, url)
	q := testbroker.Name(t, "scrape")
	t.Cleanup(func() { testbroker.DeleteQueues(t, url, q, q+".parked") })

	reg := prometheus.NewRegistry()
	rec := prom.New(reg)
	srv := httptest.NewServer(promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	defer srv.Close()
	dir := t.TempDir()
	topo := topology.Topology{Queues: []topology.Queue{{Name: q}}}

	pub, err := publisher.New(publisher.Config{URLs: []string{px.URL}, Source: "scrape-src", ConnectionName: "pub-a",
		JournalPath: filepath.Join(dir, "j.db"), Topology: topo, Metrics: rec})
	require.NoError(t, err)
	defer pub.Close(context.Background())
	con, err := consumer.New(consumer.Config{URLs: []string{px.URL}, Queue: q, ConnectionName: "con-a",
		StorePath: filepath.Join(dir, "c.db"), Topology: topo, Metrics: rec, MaxAttempts: 2,
		RetryBackoff: func() backoff.BackOff { return backoff.NewConstantBackOff(time.Millisecond) }})
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- con.Run(ctx, func(_ context.Context, m *consumer.Message) error {
			if bytes.Equal(m.Body, []byte("poison")) {
				return fmt.Errorf("refused")
			}
			return nil
		})
	}()
	defer func() { cancel(); require.NoError(t, <-done); require.NoError(t, con.Close(context.Background())) }()

	publish := func(bodies ...string) {
		for _, b := range bodies {
			_, err := pub.Publish(context.Background(), publisher.Message{RoutingKey: q, Body: []byte(b)})
			require.NoError(t, err)
		}
		wctx, wcancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer wcancel()
		require.NoError(t, pub.Flush(wctx))
	}
	pl := `{client="pub-a"}`
	pe := `{client="pub-a",exchange=""}` // the per-message metrics carry the exchange
	cl := fmt.Sprintf(`{client="con-a",queue=%q}`, q)
	waitFor := func(series string, want float64) map[string]float64 {
		var m map[string]float64
		require.Eventually(t, func() bool { m = scrape(t, srv.URL); return m[series] >= want }, 30*time.Second, 50*time.Millisecond,
			"%s never reached %v", series, want)
		return m
	}

	bodies := make([]string, 10)
	for i := range bodies {
		bodies[i] = fmt.Sprint("m", i)
	}
	publish(bodies...)
	m := waitFor("rabbitkit_consumer_handled_total"+cl, 10)
	require.Equal(t, 10.0, m["rabbitkit_publisher_accepted_total"+pe])
	require.Equal(t, 10.0, m["rabbitkit_publisher_confirmed_total"+pe])
	require.Equal(t, 10.0, m["rabbitkit_publisher_confirm_latency_seconds_count"+pe])
	require.Equal(t, 10.0, m[`rabbitkit_publisher_confirm_latency_seconds_bucket{client="pub-a",exchange="",le="+Inf"}`])
	require.Equal(t, 1.0, m["rabbitkit_publisher_connected"+pl])
	require.Zero(t, m["rabbitkit_publisher_reconnects_total"+pl])

	px.Cut(t) // both connections go through the proxy
	waitFor("rabbitkit_publisher_reconnects_total"+pl, 1)
	waitFor("rabbitkit_consumer_reconnects_total"+cl, 1)
	publish("n1", "poison", "n2")
	waitFor("rabbitkit_consumer_parked_total"+cl, 1)
	m = waitFor("rabbitkit_consumer_handled_total"+cl, 12)
	require.Equal(t, 13.0, m["rabbitkit_publisher_accepted_total"+pe])
	require.Equal(t, 13.0, m["rabbitkit_publisher_confirmed_total"+pe])
	require.GreaterOrEqual(t, m["rabbitkit_publisher_published_total"+pe], 13.0)
	require.Equal(t, 12.0, m["rabbitkit_consumer_handled_total"+cl])
	require.Equal(t, 1.0, m["rabbitkit_consumer_parked_total"+cl])
	require.Equal(t, 2.0, m["rabbitkit_consumer_handler_errors_total"+cl], "MaxAttempts 2")
	require.GreaterOrEqual(t, m["rabbitkit_consumer_handler_seconds_count"+cl], 14.0)
	require.Zero(t, m["rabbitkit_consumer_gaps_given_up_total"+cl])
	require.Zero(t, m["rabbitkit_publisher_journal_parked"+pl])
	var build bool
	for k := range m {
		build = build || strings.HasPrefix(k, "rabbitkit_build_info{goversion=")
	}
	require.True(t, build, "rabbitkit_build_info")
}
