package publisher

import (
	"context"
	"testing"
	"time"

	"github.com/rabbitkit/rabbitkit/internal/testbroker"
	"github.com/rabbitkit/rabbitkit/topology"
)

// Close must return within its context even when a large publish is stuck in a socket write
// because the broker raised a memory alarm: amqp091-go cannot interrupt such a write, so Close cuts
// the socket. What was not confirmed stays journaled.
func TestCloseWhileAlarmHoldsAWrite(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a private RabbitMQ node")
	}
	node := testbroker.StartNode(t)
	s := newSetup(t, node.URL, topology.Classic, nil)
	cfg := s.config(t, node.URL, t.TempDir())
	p, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	big := make([]byte, 16<<20) // far larger than the socket buffers
	if _, err := p.Publish(ctx, Message{Exchange: s.exchange, RoutingKey: s.key, Body: []byte("small")}); err != nil {
		t.Fatal(err)
	}
	flush(t, p, 30*time.Second) // connected and confirmed once
	node.SetMemoryHighWatermark(t, 0.0000001)
	t.Cleanup(func() { node.SetMemoryHighWatermark(t, 0.4) })
	for range 4 {
		if _, err := p.Publish(ctx, Message{Exchange: s.exchange, RoutingKey: s.key, Body: big}); err != nil {
			t.Fatal(err)
		}
	}
	time.Sleep(3 * time.Second) // the sender is now blocked: in a write, or waiting for unblocked

	closeCtx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	start := time.Now()
	done := make(chan struct{})
	go func() { _ = p.Close(closeCtx); close(done) }()
	select {
	case <-done:
	case <-time.After(15 * time.Second):
		t.Fatal("Close hung behind a write held by the broker alarm")
	}
	if d := time.Since(start); d > 6*time.Second {
		t.Fatalf("Close took %v with a 2 s context", d)
	}
}
