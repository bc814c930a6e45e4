package consumer_test

import (
	"context"
	"errors"
	"log/slog"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/rabbitkit/rabbitkit/consumer"
	"github.com/rabbitkit/rabbitkit/internal/testbroker"
	"github.com/rabbitkit/rabbitkit/internal/testutil"
)

// The parker against a real broker: a parking publish the broker returns (the parking queue was
// deleted under a live parking connection: RabbitMQ answers basic.return, then basic.ack) is not
// a park. The original stays unacked, the parker starts over on a new connection, which declares
// the parking queue again, and the message is parked once.
func TestParkingPublishReturnedIsRetried(t *testing.T) {
	f := newFixture(t, testbroker.SharedURL(t))
	ch := f.channel()
	var logs testutil.SyncBuffer
	cfg := f.config()
	cfg.Logger = slog.New(slog.NewTextHandler(&logs, nil))
	c, err := consumer.New(cfg)
	require.NoError(t, err)
	run := start(t, c, func(context.Context, *consumer.Message) error { return consumer.Poison(errors.New("bad")) }, nil)

	f.publish(ch, stamped("src", "s", 1, 1, "first"))
	testutil.Eventually(t, 20*time.Second, "first parked", func() bool { return f.messages(ch, f.parked) == 1 })
	_, err = ch.QueueDelete(f.parked, false, false, false) // the parking connection stays open
	require.NoError(t, err)

	f.publish(ch, stamped("src", "s", 1, 2, "second"))
	testutil.Eventually(t, 20*time.Second, "second parked after the return", func() bool { return f.messages(ch, f.parked) == 1 })
	require.Contains(t, logs.String(), "message returned", "the first parking publish of the second message was returned")
	testutil.Eventually(t, 10*time.Second, "originals acked", func() bool { return f.messages(ch, f.queue) == 0 })
	run.stop(t)
	require.Equal(t, 2.0, f.mem.Get(consumer.MetricParked))
	d, ok, err := ch.Get(f.parked, true)
	require.NoError(t, err)
	require.True(t, ok)
	require.Equal(t, "second", string(d.Body))
}
