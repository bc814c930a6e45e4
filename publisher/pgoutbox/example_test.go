package pgoutbox_test

import (
	"context"
	"database/sql"
	"fmt"
	"log"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/rabbitkit/rabbitkit/protocol"
	"github.com/rabbitkit/rabbitkit/publisher"
	"github.com/rabbitkit/rabbitkit/publisher/pgoutbox"
	"github.com/rabbitkit/rabbitkit/topology"
)

// The business row and its message commit in one transaction; the relay, run on every replica,
// sends what committed.
func ExampleOutbox_PublishTx() {
	ctx := context.Background()
	pool, err := pgxpool.New(ctx, "postgres://orders@db:5432/orders")
	if err != nil {
		log.Fatal(err)
	}
	ob, err := pgoutbox.Open(ctx, pool, pgoutbox.Options{Source: "orders-api"})
	if err != nil {
		log.Fatal(err)
	}
	go func() {
		err := ob.Relay(ctx, publisher.Config{
			URLs:     []string{"amqp://guest:guest@localhost:5672/"},
			Topology: topology.Topology{Queues: []topology.Queue{{Name: "orders", Type: topology.Quorum}}},
		})
		if err != nil {
			log.Print(err)
		}
	}()
	err = pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `INSERT INTO orders (customer, body) VALUES ($1, $2)`, "c-17", "{}"); err != nil {
			return err
		}
		st, err := ob.PublishTx(ctx, tx, publisher.Message{RoutingKey: "orders", Stream: "customer/c-17", Body: []byte("{}")})
		fmt.Println("stamp", st)
		return err
	})
	if err != nil {
		log.Fatal(err)
	}
}

// The business row and the message leave in one round trip.
func ExampleOutbox_QueuePublish() {
	ctx := context.Background()
	var ob *pgoutbox.Outbox // from pgoutbox.Open
	var tx pgx.Tx           // the caller's transaction
	var b pgx.Batch
	b.Queue(`INSERT INTO orders (customer, body) VALUES ($1, $2)`, "c-17", "{}")
	var st protocol.Stamp
	if err := ob.QueuePublish(&b, publisher.Message{RoutingKey: "orders", Stream: "customer/c-17", Body: []byte("{}")}, &st); err != nil {
		log.Fatal(err) // an invalid message: nothing was queued
	}
	if err := tx.SendBatch(ctx, &b).Close(); err != nil {
		log.Fatal(err)
	}
	if err := tx.Commit(ctx); err != nil {
		log.Fatal(err)
	}
	fmt.Println("accepted", st)
}

// database/sql users (pgx's stdlib driver) publish in their *sql.Tx.
func ExampleOutbox_PublishSQLTx() {
	ctx := context.Background()
	var ob *pgoutbox.Outbox // from pgoutbox.Open on a pgxpool.Pool of the same database
	var db *sql.DB          // sql.Open("pgx", dsn)
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		log.Fatal(err)
	}
	defer func() { _ = tx.Rollback() }()
	st, err := ob.PublishSQLTx(ctx, tx, publisher.Message{RoutingKey: "orders", Body: []byte("{}")})
	if err != nil {
		log.Fatal(err)
	}
	if err := tx.Commit(); err != nil {
		log.Fatal(err)
	}
	fmt.Println("accepted", st)
}
