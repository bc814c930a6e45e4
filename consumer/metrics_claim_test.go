package consumer_test

import (
	"context"
	"path/filepath"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/require"
	bolt "go.etcd.io/bbolt"

	"github.com/rabbitkit/rabbitkit/consumer"
	"github.com/rabbitkit/rabbitkit/metrics"
	"github.com/rabbitkit/rabbitkit/metrics/prom"
)

// Two consumers reporting to one registry are told apart by ConnectionName and Queue; a second
// one with both equal is refused until the first closes.
func TestMetricsIdentityClaimed(t *testing.T) {
	rec := prom.New(prometheus.NewRegistry())
	dir := t.TempDir()
	cfg := func(queue, name, file string) consumer.Config {
		return consumer.Config{URLs: []string{"amqp://guest:guest@127.0.0.1:1/"}, Queue: queue,
			ConnectionName: name, StorePath: filepath.Join(dir, file), Metrics: rec}
	}
	a, err := consumer.New(cfg("orders", "", "a.db"))
	require.NoError(t, err)
	b, err := consumer.New(cfg("invoices", "", "b.db"))
	require.NoError(t, err, "another queue")
	c, err := consumer.New(cfg("orders", "billing-2", "c.db"))
	require.NoError(t, err, "another ConnectionName")
	_, err = consumer.New(cfg("orders", "", "d.db"))
	require.ErrorIs(t, err, metrics.ErrIdentityInUse)
	require.NoError(t, a.Close(context.Background()))
	d, err := consumer.New(cfg("orders", "", "d.db"))
	require.NoError(t, err, "released on Close")
	for _, x := range []*consumer.Consumer[*bolt.Tx]{b, c, d} {
		require.NoError(t, x.Close(context.Background()))
	}
}
