package consumer_test

import (
	"context"
	"crypto/tls"
	"errors"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/rabbitkit/rabbitkit/consumer"
	"github.com/rabbitkit/rabbitkit/internal/testbroker"
	"github.com/rabbitkit/rabbitkit/internal/testutil"
)

// TestTLS consumes over amqps from a private node whose TLS listener requires a client
// certificate, through a connection reset, and parks a poison message through the parking
// connection, which uses the same TLS config. Effects stay exactly once.
func TestTLS(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a private RabbitMQ node")
	}
	node := testbroker.StartNode(t, testbroker.WithTLS())
	px := testbroker.NewProxy(t, node.TLS.URL)
	f := newFixture(t, node.URL)
	ch := f.channel()
	want := publishStreams(f, ch, []string{"a", "b"}, 1, 200)
	f.publish(ch, stamped("src", "poison", 1, 1, "poison"))

	var handshakes atomic.Int32
	tc := node.TLS.Client.Clone()
	tc.VerifyConnection = func(tls.ConnectionState) error {
		handshakes.Add(1)
		return nil
	}
	cfg := f.config(px.URL)
	cfg.TLS = tc
	cfg.Heartbeat = time.Second
	cfg.MaxAttempts = 2
	c, err := consumer.New(cfg)
	require.NoError(t, err)
	var cnt counter
	slow := slowCounting(&cnt)
	run := start(t, c, func(ctx context.Context, m *consumer.Message) error {
		if m.Stamped && m.Stamp.Stream == "poison" {
			return errors.New("poison")
		}
		return slow(ctx, m)
	}, nil)
	testutil.Eventually(t, 20*time.Second, "first effects", func() bool { return len(cnt.snapshot()) >= 50 })
	px.ResetPeer(t)
	time.Sleep(1500 * time.Millisecond) // the next heartbeat carries the reset
	px.Restore(t)
	testutil.Eventually(t, 60*time.Second, "all effects", func() bool { return len(cnt.snapshot()) == len(want) })
	testutil.Eventually(t, 20*time.Second, "poison parked", func() bool { return f.messages(ch, f.parked) == 1 })
	testutil.Eventually(t, 20*time.Second, "queue empty", func() bool { return f.messages(ch, f.queue) == 0 })
	run.stop(t)
	requireExactlyOnce(t, cnt.snapshot(), want)
	require.GreaterOrEqual(t, f.mem.Get(consumer.MetricReconnects), 1.0)
	require.Equal(t, 1.0, f.mem.Get(consumer.MetricParked))
	require.GreaterOrEqual(t, handshakes.Load(), int32(3), "consume connection, its replacement and the parking connection")
	require.Empty(t, tc.ServerName, "the caller's tls.Config must not be changed")
}

// TestTLSConfigChecks: New refuses a plain amqp:// URL when TLS is configured, and URLs that do
// not parse, without the password in the error.
func TestTLSConfigChecks(t *testing.T) {
	for _, tc := range []struct {
		name string
		urls []string
		tls  *tls.Config
	}{
		{"plain with TLS", []string{"amqp://u:secret@b:5672/"}, &tls.Config{}},
		{"not a URL", []string{"amqp://u:secret@broker:port/"}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := consumer.New(consumer.Config{URLs: tc.urls, TLS: tc.tls, Queue: "q", StorePath: t.TempDir() + "/s.db"})
			require.ErrorIs(t, err, consumer.ErrInvalidConfig)
			require.False(t, strings.Contains(err.Error(), "secret"), err.Error())
		})
	}
}
