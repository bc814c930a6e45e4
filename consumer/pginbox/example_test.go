package pginbox_test

import (
	"context"
	"fmt"
	"log"
	"log/slog"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/rabbitkit/rabbitkit/consumer"
	"github.com/rabbitkit/rabbitkit/consumer/dedup"
	"github.com/rabbitkit/rabbitkit/consumer/pginbox"
	"github.com/rabbitkit/rabbitkit/internal/pgtest"
	"github.com/rabbitkit/rabbitkit/protocol"
)

// A message and its redelivery, committed through the inbox as a consumer's worker does: the
// handler's INSERT and the dedup mark commit together, so the redelivery is a duplicate and the
// order is written once. (A Consumer built with consumer.NewWithStore makes these batches itself.)
func Example() {
	ctx := context.Background()
	dsn, drop, err := pgtest.NewDatabase(pgtest.ServerURL()) // a scratch database for the example
	if err != nil {
		log.Fatal(err)
	}
	defer drop()
	pool, err := pgxpool.New(ctx, dsn)
	if err != nil {
		log.Fatal(err)
	}
	defer pool.Close()
	if _, err := pool.Exec(ctx, `CREATE TABLE orders (id text NOT NULL)`); err != nil {
		log.Fatal(err)
	}

	inbox, err := pginbox.Open(ctx, pool, pginbox.Options{Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		log.Fatal(err)
	}
	defer inbox.Close()

	st := protocol.Stamp{Source: "orders-svc", Epoch: 1, Stream: "orders", Seq: 1}
	for _, delivery := range []string{"first delivery", "redelivery"} {
		b := &consumer.Batch[pgx.Tx]{Ops: []consumer.Op[pgx.Tx]{{
			Key: dedup.KeyOf(st), Stamp: st, Mark: true,
			Effect: func(tx pgx.Tx) error { // the transactional handler
				_, err := tx.Exec(ctx, `INSERT INTO orders (id) VALUES ($1)`, "order-42")
				return err
			},
		}}}
		if err := inbox.Commit(ctx, b); err != nil {
			log.Fatal(err)
		}
		fmt.Println(delivery+":", b.Ops[0].Verdict.Kind)
	}
	var n int
	if err := pool.QueryRow(ctx, `SELECT count(*) FROM orders`).Scan(&n); err != nil {
		log.Fatal(err)
	}
	fmt.Println("orders written:", n)
	// Output:
	// first delivery: new
	// redelivery: duplicate
	// orders written: 1
}
