package consumer_test

import (
	"context"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
	"github.com/stretchr/testify/require"

	"github.com/rabbitkit/rabbitkit/consumer"
	"github.com/rabbitkit/rabbitkit/internal/testbroker"
	"github.com/rabbitkit/rabbitkit/internal/testutil"
)

func publishStreams(f *fixture, ch *amqp.Channel, streams []string, from, to int64) []string {
	var msgs []amqp.Publishing
	var keys []string
	for seq := from; seq <= to; seq++ {
		for _, s := range streams {
			msgs = append(msgs, stamped("src", s, 1, seq, "x"))
			keys = append(keys, key("src", s, 1, seq))
		}
	}
	f.publish(ch, msgs...)
	return keys
}

// slowCounting is a plain handler that counts effects and takes a little time, so that hundreds
// of deliveries are outstanding (received, unacked) when a fault hits.
func slowCounting(cnt *counter) consumer.Handler {
	return func(ctx context.Context, m *consumer.Message) error {
		time.Sleep(time.Millisecond)
		cnt.add(m)
		return nil
	}
}

// gatedCounting is slowCounting that holds every handler after the first n effects until gate
// is closed: the deliveries behind them stay unacked, so a fault injected meanwhile always hits
// unacked deliveries (on a fast machine all of them could otherwise be handled and acked first).
func gatedCounting(cnt *counter, n int, gate <-chan struct{}) consumer.Handler {
	slow := slowCounting(cnt)
	return func(ctx context.Context, m *consumer.Message) error {
		if len(cnt.snapshot()) >= n {
			select {
			case <-gate:
			case <-ctx.Done():
				return ctx.Err()
			}
		}
		return slow(ctx, m)
	}
}

// Connection faults with unacked deliveries outstanding: the consumer reconnects, drops the acks
// of the old channel, and every message is applied exactly once.
func TestConnectionFaultsWithUnackedDeliveries(t *testing.T) {
	tests := []struct {
		name  string
		fault func(t *testing.T, p *testbroker.Proxy)
	}{
		{"cut", func(t *testing.T, p *testbroker.Proxy) { p.Cut(t) }},
		{"reset peer", func(t *testing.T, p *testbroker.Proxy) {
			p.ResetPeer(t)
			// All deliveries may already be buffered client-side; the next heartbeat (1 s)
			// then carries the reset.
			time.Sleep(1500 * time.Millisecond)
			p.Restore(t)
		}},
		{"black hole", func(t *testing.T, p *testbroker.Proxy) {
			p.Blackhole(t)
			time.Sleep(4 * time.Second) // > 3 heartbeats of 1s
			p.Restore(t)
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			url := testbroker.SharedURL(t)
			f := newFixture(t, url)
			ch := f.channel()
			want := publishStreams(f, ch, []string{"a", "b", "c"}, 1, 150)
			p := testbroker.NewProxy(t, url)
			cfg := f.config(p.URL)
			cfg.Workers = 2
			cfg.Heartbeat = time.Second
			c, err := consumer.New(cfg)
			require.NoError(t, err)
			var cnt counter
			gate := make(chan struct{})
			run := start(t, c, gatedCounting(&cnt, 60, gate), nil)
			testutil.Eventually(t, 20*time.Second, "first effects", func() bool { return len(cnt.snapshot()) >= 60 })
			tt.fault(t, p)
			close(gate)
			testutil.Eventually(t, 60*time.Second, "all effects", func() bool { return len(cnt.snapshot()) == len(want) })
			testutil.Eventually(t, 20*time.Second, "queue empty", func() bool { return f.messages(ch, f.queue) == 0 })
			run.stop(t)
			requireExactlyOnce(t, cnt.snapshot(), want)
			require.GreaterOrEqual(t, f.mem.Get(consumer.MetricReconnects), 1.0)
			require.Positive(t, f.mem.Get(consumer.MetricRedeliveries), "the fault hit unacked deliveries")
		})
	}
}

// The queue is deleted under the consumer: the broker cancels the consumer, which re-declares the
// topology and resumes; messages published afterwards are handled exactly once.
func TestQueueDeletedUnderConsumer(t *testing.T) {
	f := newFixture(t, testbroker.SharedURL(t))
	ch := f.channel()
	want := publishStreams(f, ch, []string{"a"}, 1, 20)
	c, err := consumer.New(f.config())
	require.NoError(t, err)
	var cnt counter
	run := start(t, c, slowCounting(&cnt), nil)
	testutil.Eventually(t, 20*time.Second, "first effects", func() bool { return len(cnt.snapshot()) == 20 })
	_, err = ch.QueueDelete(f.queue, false, false, false)
	require.NoError(t, err)
	testutil.Eventually(t, 20*time.Second, "consumer resumed", func() bool {
		return f.mem.Get(consumer.MetricReconnects) >= 1 && f.messages(ch, f.queue) == 0
	})
	want = append(want, publishStreams(f, ch, []string{"a"}, 21, 40)...)
	testutil.Eventually(t, 20*time.Second, "later effects", func() bool { return len(cnt.snapshot()) == 40 })
	run.stop(t)
	requireExactlyOnce(t, cnt.snapshot(), want)
}

// The broker is killed (kill -9) and restarted while deliveries are outstanding: the confirmed,
// persistent messages survive, are redelivered, and are applied exactly once.
func TestBrokerRestart(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a private RabbitMQ node (~15 s)")
	}
	node := testbroker.StartNode(t)
	f := newFixture(t, node.URL)
	ch := f.channel()
	want := publishStreams(f, ch, []string{"a", "b"}, 1, 150)
	cfg := f.config()
	cfg.Heartbeat = time.Second
	c, err := consumer.New(cfg)
	require.NoError(t, err)
	var cnt counter
	run := start(t, c, slowCounting(&cnt), nil)
	testutil.Eventually(t, 20*time.Second, "first effects", func() bool { return len(cnt.snapshot()) >= 50 })
	node.Kill(t)
	node.Start(t)
	testutil.Eventually(t, 90*time.Second, "all effects", func() bool { return len(cnt.snapshot()) == len(want) })
	ch = f.channel()
	testutil.Eventually(t, 20*time.Second, "queue empty", func() bool { return f.messages(ch, f.queue) == 0 })
	run.stop(t)
	requireExactlyOnce(t, cnt.snapshot(), want)
	require.GreaterOrEqual(t, f.mem.Get(consumer.MetricReconnects), 1.0)
}

// The broker's consumer timeout closes the channel (406 PRECONDITION_FAILED "delivery
// acknowledgement timed out") while a handler is still running: the consumer reconnects, the
// handler's result is committed but its ack (for the dead channel) dropped, and the redelivery is
// dropped as a duplicate. Effects stay exactly once.
func TestBrokerConsumerTimeout(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a private RabbitMQ node")
	}
	node := testbroker.StartNode(t)
	node.Ctl(t, "eval", "application:set_env(rabbit, consumer_timeout, 1000).")
	// The channel checks the timeout on its tick, every 60 s by default.
	node.Ctl(t, "eval", "application:set_env(rabbit, channel_tick_interval, 500).")
	f := newFixture(t, node.URL)
	ch := f.channel()
	want := publishStreams(f, ch, []string{"a"}, 1, 5)
	c, err := consumer.New(f.config())
	require.NoError(t, err)
	var cnt counter
	first := true
	run := start(t, c, func(ctx context.Context, m *consumer.Message) error {
		if first {
			first = false
			// Hold the delivery unacked past the timeout, until the broker closed the channel.
			for f.mem.Get(consumer.MetricReconnects) == 0 && ctx.Err() == nil {
				time.Sleep(50 * time.Millisecond)
			}
		}
		cnt.add(m)
		return nil
	}, nil)
	testutil.Eventually(t, 90*time.Second, "all effects", func() bool { return len(cnt.snapshot()) == len(want) })
	testutil.Eventually(t, 20*time.Second, "queue empty", func() bool { return f.messages(ch, f.queue) == 0 })
	run.stop(t)
	requireExactlyOnce(t, cnt.snapshot(), want)
	require.GreaterOrEqual(t, f.mem.Get(consumer.MetricDuplicates), 1.0, "the committed message came back and was dropped")
}
