package publisher

import (
	"context"
	"path/filepath"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/require"

	"github.com/rabbitkit/rabbitkit/metrics"
	"github.com/rabbitkit/rabbitkit/metrics/prom"
)

// Two publishers reporting to one registry are told apart by Config.ConnectionName; a second one
// with the same name is refused until the first closes.
func TestMetricsIdentityClaimed(t *testing.T) {
	reg := prometheus.NewRegistry()
	rec := prom.New(reg)
	dir := t.TempDir()
	cfg := func(source, file string) Config {
		return Config{URLs: []string{"amqp://guest:guest@127.0.0.1:1/"}, Source: source,
			JournalPath: filepath.Join(dir, file), Metrics: rec}
	}
	a, err := New(cfg("src-a", "a.db"))
	require.NoError(t, err)
	b, err := New(cfg("src-b", "b.db")) // default ConnectionName differs by source
	require.NoError(t, err)
	c := cfg("src-c", "c.db")
	c.ConnectionName = a.cfg.ConnectionName
	_, err = New(c)
	require.ErrorIs(t, err, metrics.ErrIdentityInUse)
	require.NoError(t, a.Close(context.Background()))
	again, err := New(c)
	require.NoError(t, err, "released on Close")
	require.NoError(t, again.Close(context.Background()))
	require.NoError(t, b.Close(context.Background()))
}
