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

// While the broker has a memory alarm, parking a message larger than the socket buffers blocks in
// a socket write that ignores contexts. Run must still return soon after its ctx and DrainTimeout
// (found in review: it hung until the alarm cleared), and the message must stay in the queue.
func TestRunReturnsWhileParkingIsBlockedByAnAlarm(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a private RabbitMQ node")
	}
	node := testbroker.StartNode(t)
	f := newFixture(t, node.URL)
	ch := f.channel()
	// A malformed stamp is parked at once; 32 MiB cannot fit in the socket buffers.
	bad := amqp.Publishing{Headers: amqp.Table{"rk-source": "s", "rk-epoch": int64(1), "rk-stream": "x", "rk-seq": int64(-1)}, Body: make([]byte, 32<<20)}
	f.publish(ch, bad)
	node.SetMemoryHighWatermark(t, 0.0000001)
	t.Cleanup(func() { node.SetMemoryHighWatermark(t, 0.4) })

	cfg := f.config()
	cfg.DrainTimeout = 2 * time.Second
	c, err := consumer.New(cfg)
	require.NoError(t, err)
	defer c.Close(context.Background())
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx, func(context.Context, *consumer.Message) error { return nil }) }()
	time.Sleep(4 * time.Second) // the delivery arrives and the parker's publish blocks
	cancel()
	start := time.Now()
	select {
	case <-done:
		require.Less(t, time.Since(start), cfg.DrainTimeout+8*time.Second)
	case <-time.After(40 * time.Second):
		t.Fatal("Run did not return while the broker alarm blocked the parking publish")
	}
	node.SetMemoryHighWatermark(t, 0.4)
	ch = f.channel()
	testutil.Eventually(t, 20*time.Second, "the message is back in the queue, not lost", func() bool { return f.messages(ch, f.queue) == 1 })
}
