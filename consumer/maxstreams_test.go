package consumer_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/rabbitkit/rabbitkit/consumer"
	"github.com/rabbitkit/rabbitkit/internal/testbroker"
	"github.com/rabbitkit/rabbitkit/internal/testutil"
	"github.com/rabbitkit/rabbitkit/protocol"
)

// Config.MaxStreams: past the bound, messages of new streams (forged sources, say) are parked with
// the reason and counted, never accounted for; streams already held keep being handled, across a
// restart, and are never evicted. Two workers share the bound.
func TestMaxStreamsBound(t *testing.T) {
	f := newFixture(t, testbroker.SharedURL(t))
	ch := f.channel()
	cfg := f.config()
	cfg.MaxStreams, cfg.Workers = 5, 2
	c, err := consumer.New(cfg)
	require.NoError(t, err)
	var cnt counter
	run := start(t, c, func(_ context.Context, m *consumer.Message) error { cnt.add(m); return nil }, nil)
	for i := range 5 {
		f.publish(ch, stamped(fmt.Sprint("trusted-", i), "s", 1, 1, "x"))
	}
	testutil.Eventually(t, 10*time.Second, "5 streams", func() bool { return len(cnt.snapshot()) == 5 })
	for i := range 20 {
		f.publish(ch, stamped(fmt.Sprint("forged-", i), "s", 1, 1, "x"))
	}
	for i := range 5 {
		f.publish(ch, stamped(fmt.Sprint("trusted-", i), "s", 1, 2, "x"))
	}
	testutil.Eventually(t, 10*time.Second, "20 refused", func() bool { return f.mem.Get(consumer.MetricStreamsRefused) == 20 })
	testutil.Eventually(t, 10*time.Second, "the held streams go on", func() bool { return len(cnt.snapshot()) == 10 })
	run.stop(t)
	for k := range cnt.snapshot() {
		require.True(t, strings.HasPrefix(k, "rk2:trusted-"), "a refused stream was handled: %s", k)
	}
	require.Equal(t, 20, f.messages(ch, f.parked))
	d, ok, err := ch.Get(f.parked, true)
	require.NoError(t, err)
	require.True(t, ok)
	reason, _ := d.Headers[protocol.HeaderParkReason].(string)
	require.Contains(t, reason, "Config.MaxStreams 5")
	require.Equal(t, 5.0, f.mem.Get(consumer.MetricStreams))

	// After a restart the bound holds against the loaded state.
	run = start(t, c, func(_ context.Context, m *consumer.Message) error { cnt.add(m); return nil }, nil)
	f.publish(ch, stamped("forged-x", "s", 1, 1, "x"), stamped("trusted-0", "s", 1, 3, "x"))
	testutil.Eventually(t, 10*time.Second, "trusted-0 seq 3", func() bool { return cnt.snapshot()[key("trusted-0", "s", 1, 3)] == 1 })
	testutil.Eventually(t, 10*time.Second, "forged-x refused", func() bool { return f.mem.Get(consumer.MetricStreamsRefused) == 21 })
	run.stop(t)
}

// Config.Admit binds sources to broker users: RabbitMQ validates the user-id property, so a
// message of source "orders" without the orders user's user-id is refused before dedup, parked
// with the reason, and creates no state; the real one is handled.
func TestAdmitBindsSourceToUser(t *testing.T) {
	f := newFixture(t, testbroker.SharedURL(t))
	ch := f.channel()
	cfg := f.config()
	cfg.Admit = func(m *consumer.Message) error {
		if m.Stamp.Source == "orders" && m.Properties.UserID != "guest" {
			return fmt.Errorf("source %q must be published by broker user guest, not %q", m.Stamp.Source, m.Properties.UserID)
		}
		return nil
	}
	c, err := consumer.New(cfg)
	require.NoError(t, err)
	var cnt counter
	run := start(t, c, func(_ context.Context, m *consumer.Message) error { cnt.add(m); return nil }, nil)
	real := stamped("orders", "s", 1, 1, "real")
	real.UserId = "guest" // validated by the broker: the fixture's connection is guest's
	f.publish(ch, stamped("orders", "s", 1, 2, "forged"), real)
	testutil.Eventually(t, 10*time.Second, "one refused", func() bool { return f.mem.Get(consumer.MetricRefused) == 1 })
	testutil.Eventually(t, 10*time.Second, "the real one", func() bool { return len(cnt.snapshot()) == 1 })
	run.stop(t)
	require.Equal(t, 1, cnt.snapshot()[key("orders", "s", 1, 1)])
	d, ok, err := ch.Get(f.parked, true)
	require.NoError(t, err)
	require.True(t, ok)
	require.Contains(t, d.Headers[protocol.HeaderParkReason], "refused by Config.Admit: source \"orders\" must be published by broker user guest")
	require.Equal(t, 1.0, f.mem.Get(consumer.MetricStreams), "the refused message created no state of its own")
}

// The parking queue's depth is a gauge, read when a session starts (and every 30 s): it counts
// what is there whoever put it there (here: two messages put there by hand, as a broker's
// dead-lettering would).
func TestParkingQueueDepthGauge(t *testing.T) {
	f := newFixture(t, testbroker.SharedURL(t))
	ch := f.channel()
	_, err := ch.QueueDeclare(f.parked, true, false, false, false, nil)
	require.NoError(t, err)
	for i := range 2 {
		dc, err := ch.PublishWithDeferredConfirmWithContext(context.Background(), "", f.parked, true, false, stamped("src", "s", 1, int64(i+1), "dead-lettered"))
		require.NoError(t, err)
		require.True(t, dc.Wait())
	}
	c, err := consumer.New(f.config())
	require.NoError(t, err)
	run := start(t, c, func(context.Context, *consumer.Message) error { return nil }, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	require.NoError(t, c.WaitReady(ctx))
	testutil.Eventually(t, 10*time.Second, "gauge set", func() bool { return f.mem.Get(consumer.MetricParkingQueueMessages) == 2 })
	run.stop(t)
}
