package pgoutbox_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/rabbitkit/rabbitkit/consumer"
	"github.com/rabbitkit/rabbitkit/consumer/pginbox"
	"github.com/rabbitkit/rabbitkit/internal/testbroker"
	"github.com/rabbitkit/rabbitkit/publisher"
	"github.com/rabbitkit/rabbitkit/publisher/pgoutbox"
	"github.com/rabbitkit/rabbitkit/topology"
)

// Consume-transform-produce: an upstream outbox sends to queue "in"; a consumer on the PostgreSQL
// inbox handles each message in its transaction, writing the effect and publishing the result
// through the outbox with PublishTx: effect, dedup mark and outgoing message commit together, so
// each input gives exactly one effect and one output stamp.
func TestChainInboxToOutbox(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t, 10)
	in := testbroker.Name(t, "chain-in")
	testbroker.DeleteQueues(t, e.url, in)
	if _, err := e.pool.Exec(ctx, `CREATE TABLE effects (input text PRIMARY KEY)`); err != nil {
		t.Fatal(err)
	}
	up := open(t, e.pool, pgoutbox.Options{Table: "up_outbox", Source: "upstream"})
	cfgUp := e.relayConfig(t, nil)
	cfgUp.Topology = topology.Topology{Queues: []topology.Queue{{Name: in}}}
	runRelay(t, up, cfgUp)
	ob := open(t, e.pool, pgoutbox.Options{})
	runRelay(t, ob, e.relayConfig(t, nil))
	out := collect(t, e.url, e.queue)

	inbox, err := pginbox.Open(ctx, e.pool, pginbox.Options{Logger: quiet(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer inbox.Close()
	cons, err := consumer.NewWithStore[pgx.Tx](consumer.Config{URLs: []string{e.url}, Queue: in,
		Topology: topology.Topology{Queues: []topology.Queue{{Name: in}}}, Logger: quiet(t)}, inbox)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = cons.Close(context.Background()) }()
	runCtx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() {
		done <- cons.RunTx(runCtx, func(ctx context.Context, tx pgx.Tx, m *consumer.Message) error {
			if _, err := tx.Exec(ctx, `INSERT INTO effects (input) VALUES ($1)`, string(m.Body)); err != nil {
				return err
			}
			_, err := ob.PublishTx(ctx, tx, publisher.Message{RoutingKey: e.queue, Stream: "results", Body: []byte("done:" + string(m.Body))})
			return err
		})
	}()
	const n = 40
	for i := range n {
		tx, err := e.pool.Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := up.PublishTx(ctx, tx, publisher.Message{RoutingKey: in, Stream: "inputs", Body: []byte(fmt.Sprintf("i%d", i))}); err != nil {
			t.Fatal(err)
		}
		if err := tx.Commit(ctx); err != nil {
			t.Fatal(err)
		}
	}
	out.waitDistinct(t, n, 30*time.Second)
	time.Sleep(500 * time.Millisecond)
	stop()
	if err := <-done; err != nil {
		t.Fatalf("RunTx: %v", err)
	}
	var effects int
	if err := e.pool.QueryRow(ctx, `SELECT count(*) FROM effects`).Scan(&effects); err != nil {
		t.Fatal(err)
	}
	gs := out.snapshot()
	checkOrder(t, gs)
	if effects != n || out.distinct() != n {
		t.Fatalf("%d effects, %d distinct outputs, want %d each", effects, out.distinct(), n)
	}
}
