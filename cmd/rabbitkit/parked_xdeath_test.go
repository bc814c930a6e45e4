package main

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
	"github.com/stretchr/testify/require"

	"github.com/rabbitkit/rabbitkit/internal/testbroker"
	"github.com/rabbitkit/rabbitkit/topology"
)

// Messages the broker dead-lettered to the parking queue (a quorum queue declared by topology, past
// its x-delivery-limit or rejected) carry x-death, not rk-park-*: list and show say why from it,
// and redrive sends them back where the broker took them from, stamp unchanged.
func TestParkedDeadLettered(t *testing.T) {
	url := testbroker.SharedURL(t)
	q := testbroker.Name(t, "cli-dead")
	testbroker.DeleteQueues(t, url, q, q+".parked")
	conn, err := amqp.Dial(url)
	require.NoError(t, err)
	defer conn.Close()
	ch, err := conn.Channel()
	require.NoError(t, err)
	top := topology.Topology{
		Queues: []topology.Queue{{Name: q, Type: topology.Quorum, Args: amqp.Table{"x-delivery-limit": int64(1)}},
			{Name: q + ".parked"}}, // as the consumer declares it
		Bindings: []topology.Binding{{Queue: q, Exchange: "amq.direct", Key: "key-" + q}},
	}
	require.NoError(t, top.Declare(ch))
	require.NoError(t, ch.Confirm(false))
	for i := 1; i <= 2; i++ {
		dc, err := ch.PublishWithDeferredConfirmWithContext(context.Background(), "amq.direct", "key-"+q, true, false, amqp.Publishing{
			MessageId: fmt.Sprintf("rk2:orders-api:7:s:%d", i), DeliveryMode: amqp.Persistent, Expiration: "600000",
			Headers: amqp.Table{"app-header": "kept"}, Body: fmt.Appendf(nil, `{"order":%d}`, i)})
		require.NoError(t, err)
		ok, err := dc.WaitContext(context.Background())
		require.NoError(t, err)
		require.True(t, ok)
	}
	get := func(c *amqp.Channel) amqp.Delivery {
		var d amqp.Delivery
		require.Eventually(t, func() bool {
			var ok bool
			var err error
			d, ok, err = c.Get(q, false)
			require.NoError(t, err)
			return ok
		}, 5*time.Second, 10*time.Millisecond)
		return d
	}
	// #1: returned by two channel closes (a crashed consumer), past the limit of 1.
	for range 2 {
		c, err := conn.Channel()
		require.NoError(t, err)
		require.Equal(t, "rk2:orders-api:7:s:1", get(c).MessageId)
		require.NoError(t, c.Close())
	}
	// #2: rejected.
	d := get(ch)
	require.Equal(t, "rk2:orders-api:7:s:2", d.MessageId)
	require.NoError(t, d.Reject(false))

	var ps []parkedOut
	require.Eventually(t, func() bool { ps = listed(t, url, q); return len(ps) == 2 }, 5*time.Second, 50*time.Millisecond)
	require.Equal(t, "delivery_limit", ps[0].DeathReason)
	require.Contains(t, ps[0].Reason, "x-delivery-limit")
	require.Equal(t, "rejected", ps[1].DeathReason)
	for i, p := range ps {
		require.Equal(t, fmt.Sprintf("rk2:orders-api:7:s:%d", i+1), p.Stamp)
		require.Equal(t, q, p.Queue)
		require.Equal(t, "amq.direct", p.Exchange)
		require.Equal(t, "key-"+q, p.RoutingKey)
		require.NotNil(t, p.ParkedAt)
	}
	code, out, stderr := cli(t, "parked", "list", q, "-url", url)
	require.Equal(t, 0, code, stderr)
	require.Contains(t, out, "dead-lettered by the broker (x-death): delivery_limit")
	code, out, stderr = cli(t, "parked", "show", q, "-url", url, "2")
	require.Equal(t, 0, code, stderr)
	require.Contains(t, out, "reason         dead-lettered by the broker (x-death): rejected")
	require.Contains(t, out, `"amq.direct" "key-`+q+`"`)

	// Re-driven to amq.direct with its routing key: back in q as first published.
	code, out, stderr = cli(t, "parked", "redrive", q, "-url", url, "all")
	require.Equal(t, 0, code, stderr)
	require.Contains(t, out, "re-driven 2")
	require.Empty(t, listed(t, url, q))
	got := drain(t, url, q)
	require.Len(t, got, 2)
	for i, g := range got {
		require.Equal(t, fmt.Sprintf("rk2:orders-api:7:s:%d", i+1), g.MessageId)
		require.Equal(t, fmt.Sprintf(`{"order":%d}`, i+1), string(g.Body))
		require.Equal(t, "kept", g.Headers["app-header"])
		require.Equal(t, "600000", g.Expiration, "the TTL the broker moved to original-expiration")
		require.Equal(t, "amq.direct", g.Exchange)
		require.Equal(t, "key-"+q, g.RoutingKey)
		for k := range g.Headers {
			require.False(t, strings.HasPrefix(k, "x-death") || strings.HasPrefix(k, "x-first-death"), k)
		}
	}
}
