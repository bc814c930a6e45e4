package pgoutbox_test

import (
	"context"
	"fmt"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/rabbitkit/rabbitkit/protocol"
	"github.com/rabbitkit/rabbitkit/publisher"
	"github.com/rabbitkit/rabbitkit/publisher/pgoutbox"
)

// go test -run '^$' -bench BenchmarkWriterCost -benchtime 4000x -count 3 ./publisher/pgoutbox/
//
// Where a writer's transaction spends its time beside the business row (16 writers, 64 streams):
// one more round trip that does nothing (SELECT 1), the outbox row alone (a fixed seq, no
// counter), the counter upsert alone, PublishTx (both in one statement), and the business row
// and PublishTx sent in one pgx.Batch (one round trip for both), and PublishTx without the id
// primary key (a measurement, not a schema). docs/BENCHMARKS.md has the numbers.
func BenchmarkWriterCost(b *testing.B) {
	ctx := context.Background()
	for _, v := range []string{"row-only", "row+select1", "row+outbox-row", "row+counter", "row+PublishTx", "row+PublishTx-batched", "row+PublishTx-noPK"} {
		b.Run(v, func(b *testing.B) {
			e := benchEnv(b)
			o := open(b, e.pool, pgoutbox.Options{})
			if v == "row+PublishTx-noPK" { // a measurement only: what the id index costs a writer
				if _, err := e.pool.Exec(ctx, `ALTER TABLE rabbitkit_outbox DROP CONSTRAINT rabbitkit_outbox_pkey`); err != nil {
					b.Fatal(err)
				}
			}
			b.ResetTimer()
			d := writers(b, b.N, func(i int) error {
				tx, err := e.pool.Begin(ctx)
				if err != nil {
					return err
				}
				defer func() { _ = tx.Rollback(ctx) }()
				stream := fmt.Sprintf("s%d", i%64)
				msg := publisher.Message{RoutingKey: e.queue, Stream: stream, Body: body256}
				if v == "row+PublishTx-batched" {
					var bt pgx.Batch
					bt.Queue(`INSERT INTO orders (note) VALUES ($1)`, "order")
					var st protocol.Stamp
					if err := o.QueuePublish(&bt, msg, &st); err != nil {
						return err
					}
					if err := tx.SendBatch(ctx, &bt).Close(); err != nil {
						return err
					}
					return tx.Commit(ctx)
				}
				if _, err := tx.Exec(ctx, `INSERT INTO orders (note) VALUES ($1)`, "order"); err != nil {
					return err
				}
				switch v {
				case "row+select1":
					_, err = tx.Exec(ctx, `SELECT 1`)
				case "row+outbox-row":
					_, err = tx.Exec(ctx, `INSERT INTO rabbitkit_outbox (epoch, stream, seq, exchange, routing_key, mandatory, props, headers, body)
						VALUES (1, $1, $2, '', $3, true, NULL, NULL, $4)`, []byte(stream), int64(i), []byte(e.queue), body256)
				case "row+counter":
					_, err = tx.Exec(ctx, `INSERT INTO rabbitkit_outbox_counters AS c (epoch, stream, next) VALUES (1, $1, 1)
						ON CONFLICT (epoch, stream) DO UPDATE SET next = c.next + 1`, []byte(stream))
				case "row+PublishTx", "row+PublishTx-noPK":
					_, err = o.PublishTx(ctx, tx, msg)
				}
				if err != nil {
					return err
				}
				return tx.Commit(ctx)
			})
			b.ReportMetric(float64(b.N)/d.Seconds(), "tx/s")
		})
	}
}
