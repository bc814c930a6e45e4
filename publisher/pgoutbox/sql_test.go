package pgoutbox_test

import (
	"context"
	"database/sql"
	"errors"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	_ "github.com/jackc/pgx/v5/stdlib" // the "pgx" database/sql driver

	"github.com/rabbitkit/rabbitkit/protocol"
	"github.com/rabbitkit/rabbitkit/publisher"
	"github.com/rabbitkit/rabbitkit/publisher/pgoutbox"
)

// PublishSQLTx (database/sql) and QueuePublish (pgx.Batch) take the same counter and rows as
// PublishTx: one stream's seqs continue across the three forms, a rollback skips nothing, and
// the relay sends all of them in order.
func TestSQLTxAndQueuePublish(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t, 6)
	db, err := sql.Open("pgx", e.dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	o := open(t, e.pool, pgoutbox.Options{})
	c := collect(t, e.url, e.queue)
	runRelay(t, o, e.relayConfig(t, nil))

	sqlPublish := func(body string, commit bool) protocol.Stamp {
		t.Helper()
		tx, err := db.BeginTx(ctx, nil)
		if err != nil {
			t.Fatal(err)
		}
		defer func() { _ = tx.Rollback() }()
		if _, err := tx.ExecContext(ctx, `INSERT INTO orders (note) VALUES ($1)`, body); err != nil {
			t.Fatal(err)
		}
		st, err := o.PublishSQLTx(ctx, tx, e.msg("orders", body))
		if err != nil {
			t.Fatal(err)
		}
		if commit {
			if err := tx.Commit(); err != nil {
				t.Fatal(err)
			}
		}
		return st
	}
	st1 := sqlPublish("s1", true)
	sqlPublish("rolled-back", false)
	if want := (protocol.Stamp{Source: "orders-svc", Epoch: 1, Stream: "orders", Seq: 1}); st1 != want {
		t.Fatalf("PublishSQLTx stamp %v, want %v", st1, want)
	}
	// An invalid message is refused before anything is sent, as by PublishTx.
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := o.PublishSQLTx(ctx, tx, publisher.Message{RoutingKey: e.queue, MessageID: "rk2:x"}); !errors.Is(err, publisher.ErrInvalidMessage) {
		t.Fatalf("invalid message: %v", err)
	}
	_ = tx.Rollback()

	// QueuePublish: the business row and the message in one round trip.
	ptx, err := e.pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var b pgx.Batch
	b.Queue(`INSERT INTO orders (note) VALUES ($1)`, "q2")
	var st2 protocol.Stamp
	if err := o.QueuePublish(&b, e.msg("orders", "q2"), &st2); err != nil {
		t.Fatal(err)
	}
	if err := ptx.SendBatch(ctx, &b).Close(); err != nil {
		t.Fatal(err)
	}
	if err := ptx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	if st2.Seq != 2 || st2.Epoch != 1 || st2.Stream != "orders" {
		t.Fatalf("QueuePublish stamp %v, want seq 2", st2)
	}
	st3 := sqlPublish("s3", true)
	if st3.Seq != 3 {
		t.Fatalf("seq %d after QueuePublish, want 3", st3.Seq)
	}
	c.waitDistinct(t, 3, 15*time.Second)
	time.Sleep(300 * time.Millisecond)
	gs := c.snapshot()
	checkOrder(t, gs)
	for _, g := range gs {
		if g.body == "rolled-back" {
			t.Fatal("a rolled-back message was sent")
		}
	}
	if len(gs) != 3 || gs[0].stamp != st1 || gs[1].stamp != st2 || gs[2].stamp != st3 {
		t.Fatalf("delivered %v", gs)
	}
}
