package main

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
	"github.com/stretchr/testify/require"

	"github.com/rabbitkit/rabbitkit/internal/testbroker"
	"github.com/rabbitkit/rabbitkit/protocol"
)

// parkCopies publishes to q.parked what the consumer's parker publishes for n messages of q
// (consumer/parker.go): the original message-id (the stamp), headers and body, and the park headers.
func parkCopies(t *testing.T, url, q string, n int, exchange, key string) {
	t.Helper()
	conn, err := amqp.Dial(url)
	require.NoError(t, err)
	defer conn.Close()
	ch, err := conn.Channel()
	require.NoError(t, err)
	_, err = ch.QueueDeclare(q, true, false, false, false, nil)
	require.NoError(t, err)
	_, err = ch.QueueDeclare(q+".parked", true, false, false, false, nil)
	require.NoError(t, err)
	require.NoError(t, ch.Confirm(false))
	at := time.Date(2026, 12, 2, 12, 0, 0, 0, time.UTC)
	for i := 1; i <= n; i++ {
		st := protocol.Stamp{Source: "orders-api", Epoch: 42, Stream: "s", Seq: int64(i)}
		dc, err := ch.PublishWithDeferredConfirmWithContext(context.Background(), "", q+".parked", false, false, amqp.Publishing{
			MessageId: st.String(), ContentType: "application/json", DeliveryMode: amqp.Persistent,
			Body: fmt.Appendf(nil, `{"order":%d}`, i),
			Headers: amqp.Table{"app-header": "kept",
				protocol.HeaderParkReason: "handler: order " + fmt.Sprint(i) + " refused\nby the ledger", protocol.HeaderParkQueue: q,
				protocol.HeaderParkExchange: exchange, protocol.HeaderParkRoutingKey: key, protocol.HeaderParkTime: at,
				protocol.HeaderParkAttempts: int64(3), protocol.HeaderParkExpiration: "600000"},
		})
		require.NoError(t, err)
		ok, err := dc.WaitContext(context.Background())
		require.NoError(t, err)
		require.True(t, ok)
	}
}

// drain takes the messages of queue (acking them) and returns them.
func drain(t *testing.T, url, queue string) []amqp.Delivery {
	t.Helper()
	conn, err := amqp.Dial(url)
	require.NoError(t, err)
	defer conn.Close()
	ch, err := conn.Channel()
	require.NoError(t, err)
	var out []amqp.Delivery
	for {
		d, ok, err := ch.Get(queue, true)
		require.NoError(t, err)
		if !ok {
			return out
		}
		out = append(out, d)
	}
}

func listed(t *testing.T, url, q string) []parkedOut {
	t.Helper()
	code, out, stderr := cli(t, "parked", "-json", "list", q, "-url", url)
	require.Equal(t, 0, code, stderr)
	var ps []parkedOut
	for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
		if l == "" {
			continue
		}
		var p parkedOut
		require.NoError(t, json.Unmarshal([]byte(l), &p))
		ps = append(ps, p)
	}
	return ps
}

func TestParked(t *testing.T) {
	url := testbroker.SharedURL(t)
	q := testbroker.Name(t, "cli-parked")
	testbroker.DeleteQueues(t, url, q, q+".parked")
	parkCopies(t, url, q, 3, "", q)

	code, out, stderr := cli(t, "parked", "list", q, "-url", url)
	require.Equal(t, 0, code, stderr)
	golden(t, "parked_list", strings.ReplaceAll(out, q, "QUEUE"))
	ps := listed(t, url, q)
	require.Len(t, ps, 3, "listing twice loses nothing")
	for i, p := range ps {
		require.Equal(t, i+1, p.Index)
		require.Equal(t, fmt.Sprintf("rk2:orders-api:42:s:%d", i+1), p.Stamp, "in queue order, with the stamp")
		require.Contains(t, p.Reason, "refused")
		require.Equal(t, q, p.RoutingKey)
		require.Equal(t, int64(3), p.Attempts)
		require.NotNil(t, p.ParkedAt)
	}

	code, out, stderr = cli(t, "parked", "show", q, "-url", url, "2")
	require.Equal(t, 0, code, stderr)
	require.Contains(t, out, `{"order":2}`)
	require.Contains(t, out, "app-header = kept")

	// Re-drive #2: it is in q with the stamp and headers as first published, and gone from q.parked.
	code, out, stderr = cli(t, "parked", "redrive", q, "-url", url, "2")
	require.Equal(t, 0, code, stderr)
	require.Contains(t, out, "re-driven 1")
	got := drain(t, url, q)
	require.Len(t, got, 1)
	require.Equal(t, "rk2:orders-api:42:s:2", got[0].MessageId)
	require.Equal(t, "kept", got[0].Headers["app-header"])
	require.Equal(t, "600000", got[0].Expiration)
	for k := range got[0].Headers {
		require.False(t, strings.HasPrefix(k, protocol.HeaderParkPrefix), k)
	}
	ps = listed(t, url, q)
	require.Len(t, ps, 2)
	require.Equal(t, "rk2:orders-api:42:s:1", ps[0].Stamp)
	require.Equal(t, "rk2:orders-api:42:s:3", ps[1].Stamp)

	// By message-id, then all.
	code, _, stderr = cli(t, "parked", "redrive", q, "-url", url, "-id", "rk2:orders-api:42:s:3")
	require.Equal(t, 0, code, stderr)
	require.Len(t, listed(t, url, q), 1)
	code, _, stderr = cli(t, "parked", "redrive", q, "-url", url, "all")
	require.Equal(t, 0, code, stderr)
	require.Empty(t, listed(t, url, q))
	require.Len(t, drain(t, url, q), 2)

	// An unroutable re-drive leaves the parked copy in place.
	parkCopies(t, url, q, 1, "amq.direct", "nowhere-"+q)
	code, _, stderr = cli(t, "parked", "redrive", q, "-url", url, "1")
	require.Equal(t, 1, code)
	require.Contains(t, stderr, "NO_ROUTE")
	require.Len(t, listed(t, url, q), 1)

	// Usage; a missing queue; a wrong password is never printed.
	code, _, _ = cli(t, "parked", "list", q)
	require.Equal(t, 2, code)
	code, _, _ = cli(t, "parked", "show", q, "-url", url, "x")
	require.Equal(t, 2, code)
	code, _, stderr = cli(t, "parked", "list", "no-such-"+q, "-url", url)
	require.Equal(t, 1, code)
	require.Contains(t, stderr, "NOT_FOUND")
	bad := withPassword(t, url)
	code, _, stderr = cli(t, "parked", "list", q, "-url", bad)
	require.Equal(t, 1, code)
	require.Contains(t, stderr, "xxxxx")
}
