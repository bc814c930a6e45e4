package pgoutbox_test

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/rabbitkit/rabbitkit/internal/pgtest"
	"github.com/rabbitkit/rabbitkit/internal/testbroker"
	"github.com/rabbitkit/rabbitkit/publisher"
	"github.com/rabbitkit/rabbitkit/publisher/pgoutbox"
)

// go test -run '^$' -bench . -benchtime 4000x ./publisher/pgoutbox/
//
// Writers: 16 goroutines, each transaction inserts a business row; "row-only" stops there (the
// baseline), "outbox" adds PublishTx (64 streams or 1), "+notify" with Options.Notify. "raw"
// publishes with amqp091-go after COMMIT and waits for the confirm; "e2e" runs the relay too and
// reports COMMIT-to-delivery latency (an upper bound of COMMIT-to-confirm).

const benchWriters = 16

var body256 = make([]byte, 256)

func benchEnv(b *testing.B) *env {
	b.Helper()
	url := testbroker.SharedURL(b)
	dsn := pgtest.DSN(b)
	pool := pgtest.PoolOn(b, dsn, benchWriters+4)
	if _, err := pool.Exec(context.Background(), `CREATE TABLE orders (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, note text NOT NULL)`); err != nil {
		b.Fatal(err)
	}
	q := testbroker.Name(b, "pgoutbox-bench")
	testbroker.DeleteQueues(b, url, q)
	return &env{url: url, dsn: dsn, pool: pool, queue: q}
}

// writers runs n transactions over benchWriters goroutines; fn runs one (i is its number).
func writers(b *testing.B, n int, fn func(i int) error) time.Duration {
	var next atomic.Int64
	var wg sync.WaitGroup
	t0 := time.Now()
	for range benchWriters {
		wg.Go(func() {
			for {
				i := int(next.Add(1)) - 1
				if i >= n {
					return
				}
				if err := fn(i); err != nil {
					b.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	return time.Since(t0)
}

func BenchmarkWriters(b *testing.B) {
	ctx := context.Background()
	for _, v := range []struct {
		name    string
		outbox  bool
		notify  bool
		streams int
	}{
		{"row-only", false, false, 0},
		{"outbox-64streams", true, false, 64},
		{"outbox-1stream", true, false, 1},
		{"outbox+notify-64streams", true, true, 64},
		{"outbox+notify-1stream", true, true, 1},
	} {
		b.Run(v.name, func(b *testing.B) {
			e := benchEnv(b)
			o := open(b, e.pool, pgoutbox.Options{Notify: v.notify})
			b.ResetTimer()
			d := writers(b, b.N, func(i int) error {
				tx, err := e.pool.Begin(ctx)
				if err != nil {
					return err
				}
				defer func() { _ = tx.Rollback(ctx) }()
				if _, err := tx.Exec(ctx, `INSERT INTO orders (note) VALUES ($1)`, "order"); err != nil {
					return err
				}
				if v.outbox {
					if _, err := o.PublishTx(ctx, tx, publisher.Message{RoutingKey: e.queue, Stream: fmt.Sprintf("s%d", i%v.streams), Body: body256}); err != nil {
						return err
					}
				}
				return tx.Commit(ctx)
			})
			b.ReportMetric(float64(b.N)/d.Seconds(), "tx/s")
		})
	}
}

// BenchmarkEndToEnd: writers commit while the relay sends; the run ends when the last message
// arrived. raw: the business row's transaction, then an amqp091-go publish waiting for its confirm.
func BenchmarkEndToEnd(b *testing.B) {
	ctx := context.Background()
	b.Run("raw", func(b *testing.B) {
		e := benchEnv(b)
		conn, err := amqp.Dial(e.url)
		if err != nil {
			b.Fatal(err)
		}
		defer conn.Close()
		ch, err := conn.Channel()
		if err != nil {
			b.Fatal(err)
		}
		if _, err := ch.QueueDeclare(e.queue, true, false, false, false, nil); err != nil {
			b.Fatal(err)
		}
		if err := ch.Confirm(false); err != nil {
			b.Fatal(err)
		}
		lat := make([]time.Duration, b.N)
		b.ResetTimer()
		d := writers(b, b.N, func(i int) error {
			tx, err := e.pool.Begin(ctx)
			if err != nil {
				return err
			}
			if _, err := tx.Exec(ctx, `INSERT INTO orders (note) VALUES ($1)`, "order"); err != nil {
				_ = tx.Rollback(ctx)
				return err
			}
			if err := tx.Commit(ctx); err != nil {
				return err
			}
			t0 := time.Now()
			dc, err := ch.PublishWithDeferredConfirmWithContext(ctx, "", e.queue, false, false,
				amqp.Publishing{DeliveryMode: amqp.Persistent, MessageId: fmt.Sprintf("m%d", i), Body: body256})
			if err != nil {
				return err
			}
			if ok, err := dc.WaitContext(ctx); err != nil || !ok {
				return fmt.Errorf("confirm: %v %v", ok, err)
			}
			lat[i] = time.Since(t0)
			return nil
		})
		report(b, d, lat, "commit-confirm")
	})
	for _, streams := range []int{64, 1} {
		b.Run(fmt.Sprintf("outbox-%dstreams", streams), func(b *testing.B) {
			e := benchEnv(b)
			o := open(b, e.pool, pgoutbox.Options{PollInterval: 50 * time.Millisecond})
			c := collect(b, e.url, e.queue)
			cfg := e.relayConfig(b, nil)
			cfg.MaxInFlight = 512
			runRelay(b, o, cfg)
			commits := make([]time.Time, b.N)
			b.ResetTimer()
			t0 := time.Now()
			writers(b, b.N, func(i int) error {
				tx, err := e.pool.Begin(ctx)
				if err != nil {
					return err
				}
				defer func() { _ = tx.Rollback(ctx) }()
				if _, err := tx.Exec(ctx, `INSERT INTO orders (note) VALUES ($1)`, "order"); err != nil {
					return err
				}
				if _, err := o.PublishTx(ctx, tx, publisher.Message{RoutingKey: e.queue, Stream: fmt.Sprintf("s%d", i%streams),
					Body: fmt.Appendf(nil, "%d", i)}); err != nil {
					return err
				}
				err = tx.Commit(ctx)
				commits[i] = time.Now()
				return err
			})
			c.waitDistinct(b, b.N, 120*time.Second)
			d := time.Since(t0)
			b.StopTimer()
			lat := make([]time.Duration, 0, b.N)
			arrived := c.arrivals()
			for body, at := range arrived {
				var i int
				if _, err := fmt.Sscanf(body, "%d", &i); err == nil && i < len(commits) {
					lat = append(lat, at.Sub(commits[i]))
				}
			}
			report(b, d, lat, "commit-delivery")
		})
	}
}

func report(b *testing.B, d time.Duration, lat []time.Duration, what string) {
	b.ReportMetric(float64(b.N)/d.Seconds(), "msg/s")
	slices.Sort(lat)
	if len(lat) > 0 {
		b.ReportMetric(float64(lat[len(lat)/2].Microseconds())/1000, what+"-p50-ms")
		b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds())/1000, what+"-p99-ms")
	}
}
