package consumer_test

import (
	"context"
	"errors"
	"strconv"
	"strings"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
	"github.com/stretchr/testify/require"

	"github.com/rabbitkit/rabbitkit/consumer"
	"github.com/rabbitkit/rabbitkit/internal/testbroker"
	"github.com/rabbitkit/rabbitkit/internal/testutil"
	"github.com/rabbitkit/rabbitkit/protocol"
)

// TestParkedCopyIsAlwaysParkable: poison messages whose copy RabbitMQ would refuse or drop are
// still parked, and stay parked.
//   - user-id set by its publisher ("guest"), while the consumer connects as another user: the
//     copy carries it in rk-park-user-id, since RabbitMQ refuses (406) a user-id other than the
//     connection's. Before, parking failed on every attempt and the message was never parked.
//   - an expiration of 4 s: the copy carries it in rk-park-expiration and does not expire.
//   - a 20 KB handler error: rk-park-reason is cut to 1 KiB.
//   - headers close to one frame: the original headers are left out (rk-park-headers-dropped)
//     rather than make the copy too large for a frame, which costs the connection every time.
func TestParkedCopyIsAlwaysParkable(t *testing.T) {
	url := testbroker.SharedURL(t)
	f := newFixture(t, url)
	ch := f.channel()
	other := testbroker.AddUser(t, url) // before publishing: rabbitmqctl takes seconds
	userID := stamped("src", "s", 1, 1, "user-id")
	userID.UserId = "guest"
	const ttl = 4 * time.Second
	expiring := stamped("src", "s", 1, 2, "expiring")
	expiring.Expiration = strconv.Itoa(int(ttl / time.Millisecond))
	bigHeaders := stampedV1("src", "s", 1, 3, "big headers")
	bigHeaders.Headers["big"] = strings.Repeat("h", 130_000)
	// The caller's message-id and the v2 stamp in rk-stamp.
	bigHeadersV2 := stamped("src", "s", 1, 4, "big headers v2")
	bigHeadersV2.Headers = amqp.Table{protocol.HeaderStamp: bigHeadersV2.MessageId, "big": strings.Repeat("h", 130_000)}
	bigHeadersV2.MessageId = "order-4"
	published := time.Now()
	f.publish(ch, userID, expiring, bigHeaders, bigHeadersV2)

	cfg := f.config(other)
	cfg.MaxAttempts = 1
	c, err := consumer.New(cfg)
	require.NoError(t, err)
	run := start(t, c, func(context.Context, *consumer.Message) error {
		return errors.New(strings.Repeat("e", 20_000))
	}, nil)
	testutil.Eventually(t, 20*time.Second, "4 parked", func() bool { return f.mem.Get(consumer.MetricParked) == 4 })
	run.stop(t)
	time.Sleep(time.Until(published.Add(ttl + 500*time.Millisecond))) // past the expiration

	got := map[string]amqp.Delivery{}
	for range 4 {
		d, ok, err := ch.Get(f.parked, true)
		require.NoError(t, err)
		require.True(t, ok, "a parked message is missing (expired?)")
		got[string(d.Body)] = d
	}
	d := got["user-id"]
	require.Empty(t, d.UserId)
	require.Equal(t, "guest", d.Headers[protocol.HeaderParkUserID])
	reason, _ := d.Headers[protocol.HeaderParkReason].(string)
	require.LessOrEqual(t, len(reason), 1024+len("…"))
	require.True(t, strings.HasPrefix(reason, "handler failed"), reason)

	d = got["expiring"]
	require.Empty(t, d.Expiration)
	require.Equal(t, expiring.Expiration, d.Headers[protocol.HeaderParkExpiration])

	d = got["big headers"]
	require.NotContains(t, d.Headers, "big")
	require.Greater(t, d.Headers[protocol.HeaderParkHeadersDropped], int64(130_000))
	require.Equal(t, f.queue, d.Headers[protocol.HeaderParkQueue])
	require.Equal(t, int64(3), d.Headers["rk-seq"], "the stamp stays when other headers are left out")
	require.Equal(t, "src", d.Headers["rk-source"])

	d = got["big headers v2"]
	require.NotContains(t, d.Headers, "big")
	require.Equal(t, "order-4", d.MessageId)
	require.Equal(t, "rk2:src:1:s:4", d.Headers[protocol.HeaderStamp], "the stamp stays when other headers are left out")
	st, _, err := protocol.Decode(d.MessageId, d.Headers)
	require.NoError(t, err)
	require.Equal(t, int64(4), st.Seq)
}
