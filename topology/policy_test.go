package topology_test

import (
	"strings"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
	"github.com/stretchr/testify/require"

	"github.com/rabbitkit/rabbitkit/internal/testbroker"
	"github.com/rabbitkit/rabbitkit/topology"
)

// shellWords splits a command line of plain words and '...' quotes (with '\” inside), as
// PolicyHint writes it.
func shellWords(t *testing.T, s string) []string {
	t.Helper()
	var words []string
	var cur strings.Builder
	inWord, quoted := false, false
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case quoted && c == '\'':
			quoted = false
		case quoted:
			cur.WriteByte(c)
		case c == '\'':
			quoted, inWord = true, true
		case c == '\\' && i+1 < len(s):
			i++
			cur.WriteByte(s[i])
			inWord = true
		case c == ' ':
			if inWord {
				words = append(words, cur.String())
				cur.Reset()
				inWord = false
			}
		default:
			cur.WriteByte(c)
			inWord = true
		}
	}
	require.False(t, quoted, "unbalanced quote in %s", s)
	if inWord {
		words = append(words, cur.String())
	}
	return words
}

// The policy the warning gives, applied as printed, makes an old quorum queue (no dead-letter
// target) dead-letter to its parking queue past its delivery limit; without it the broker drops.
func TestPolicyHintMakesOldQueueSafe(t *testing.T) {
	n := testbroker.StartNode(t)
	old, bare := "orders.v1", "bare"
	for _, q := range []string{old, bare} {
		legacyQueue(t, n.URL, q, amqp.Table{"x-delivery-limit": int64(1)})
	}
	conn, err := amqp.Dial(n.URL)
	require.NoError(t, err)
	defer conn.Close()
	for _, q := range []string{old, bare} {
		top := topology.Topology{Queues: []topology.Queue{{Name: q, Type: topology.Quorum, Args: amqp.Table{"x-delivery-limit": int64(1)}}}}
		require.Error(t, declareOnce(t, conn, top))
		require.NoError(t, declareOnce(t, conn, top))
		// The consumer's parking queue.
		require.NoError(t, declareOnce(t, conn, topology.Topology{Queues: []topology.Queue{{Name: topology.ParkingQueueOf(q)}}}))
	}

	words := shellWords(t, topology.PolicyHint(old))
	require.Equal(t, "rabbitmqctl", words[0])
	n.Ctl(t, words[1:]...)
	require.Eventually(t, func() bool {
		return strings.Contains(n.Ctl(t, "list_queues", "-q", "name", "policy"), "rk-dlx-orders.v1")
	}, 10*time.Second, 200*time.Millisecond)
	require.NotContains(t, n.Ctl(t, "list_queues", "-q", "name", "policy"), "bare\trk-dlx", "the pattern is anchored and quoted")

	ch, err := conn.Channel()
	require.NoError(t, err)
	defer ch.Close()
	for _, q := range []string{old, bare} {
		require.NoError(t, ch.Publish("", q, false, false, amqp.Publishing{MessageId: "m-" + q, DeliveryMode: amqp.Persistent, Body: []byte(q)}))
		// Returned twice by a closing channel: past the limit of 1.
		for range 2 {
			c, err := conn.Channel()
			require.NoError(t, err)
			require.Eventually(t, func() bool {
				_, ok, err := c.Get(q, false)
				require.NoError(t, err)
				return ok
			}, 5*time.Second, 10*time.Millisecond)
			require.NoError(t, c.Close())
		}
	}
	var d amqp.Delivery
	require.Eventually(t, func() bool {
		var ok bool
		d, ok, err = ch.Get(topology.ParkingQueueOf(old), true)
		require.NoError(t, err)
		return ok
	}, 5*time.Second, 20*time.Millisecond, "dead-lettered by the policy")
	require.Equal(t, "m-"+old, d.MessageId)
	require.Equal(t, "delivery_limit", d.Headers["x-first-death-reason"])

	time.Sleep(500 * time.Millisecond)
	for _, q := range []string{bare, topology.ParkingQueueOf(bare)} {
		qi, err := ch.QueueDeclarePassive(q, true, false, false, false, nil)
		require.NoError(t, err)
		require.Zero(t, qi.Messages, "%s: without a target the broker dropped it", q)
	}
}
