package integration

import (
	"context"
	"slices"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/rabbitkit/rabbitkit/internal/history"
	"github.com/rabbitkit/rabbitkit/internal/testbroker"
	"github.com/rabbitkit/rabbitkit/protocol"
	"github.com/rabbitkit/rabbitkit/topology"
)

// TestReusedSeqIsCaught: a sequence number reused for a different body (what a publisher whose
// journal lost its counter across a SIGKILL would send) leaves a ledger that looks exactly-once,
// since the ledger counts by stamp. The consumer binary must print a conflict line for it, the
// cluster must collect it, and the checker must fail the history.
func TestReusedSeqIsCaught(t *testing.T) {
	url := testbroker.SharedURL(t)
	c := newCluster(t, url, "classic", 1, 0)
	c.queue = testbroker.Name(t, "conflict-q")
	testbroker.DeleteQueues(t, url, c.queue, c.queue+".parked")

	s1 := protocol.Stamp{Source: "reuser", Epoch: 1, Stream: "x/k", Seq: 1}
	s2 := s1
	s2.Seq = 2
	sends := []struct {
		stamp protocol.Stamp
		body  string
	}{
		{s1, "first body of seq 1"},
		{s2, "seq 2"},
		{s1, "another body, same seq 1"}, // the reuse
	}
	conn, err := amqp.DialConfig(url, amqp.Config{Dial: amqp.DefaultDial(5 * time.Second)})
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		t.Fatalf("channel: %v", err)
	}
	if err := ch.Confirm(false); err != nil {
		t.Fatalf("confirm mode: %v", err)
	}
	// The same declaration the consumer makes, so that its own declare agrees.
	if err := (topology.Topology{Queues: []topology.Queue{{Name: c.queue, Type: topology.Classic}}}).Declare(ch); err != nil {
		t.Fatalf("declare: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for _, m := range sends {
		dc, err := ch.PublishWithDeferredConfirmWithContext(ctx, "", c.queue, true, false, amqp.Publishing{
			DeliveryMode: amqp.Persistent, MessageId: m.stamp.String(), Body: []byte(m.body),
		})
		if err != nil {
			t.Fatalf("publish %s: %v", m.stamp, err)
		}
		if ok, err := dc.WaitContext(ctx); !ok || err != nil {
			t.Fatalf("publish %s not confirmed: %v, %v", m.stamp, ok, err)
		}
	}

	c.startConsumer(2 * time.Second)
	if err := c.cons[0].wait(ctx); err != nil {
		t.Fatalf("consumer: %v\n%s", err, c.cons[0].describe())
	}
	c.dump()
	h := c.history()
	if !slices.Equal(h.Conflicts, []protocol.Stamp{s1}) {
		t.Fatalf("want one conflict line for %s, got %v\n%s", s1, h.Conflicts, c.cons[0].describe())
	}
	h.Runs = []history.Run{{Source: s1.Source, Accepted: []protocol.Stamp{s1, s2}}}
	res := history.Check(h)
	if res.ExactlyOnce != 2 || res.Conflicts != 1 || res.OK() {
		t.Fatalf("want the ledger exactly-once and the check failed by the conflict: %+v\n%s", res, res.Table())
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.junk) > 0 {
		t.Fatalf("unparseable output lines: %q", c.junk)
	}
}
