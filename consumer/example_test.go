package consumer_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
	bolt "go.etcd.io/bbolt"

	"github.com/rabbitkit/rabbitkit/consumer"
	"github.com/rabbitkit/rabbitkit/protocol"
	"github.com/rabbitkit/rabbitkit/topology"
)

// A transactional handler applies each order exactly once: its write to the "orders" bucket
// commits in the same bbolt transaction as the dedup mark. The duplicate of order 2 (a publisher
// resending after a lost confirm) is dropped. View then reads what the handler wrote, typed,
// without reaching for the store.
func ExampleConsumer_RunTx() {
	url := os.Getenv("RABBITKIT_AMQP_URL")
	if url == "" {
		url = "amqp://guest:guest@127.0.0.1:5672/"
	}
	queue := fmt.Sprintf("rk-example-%d", time.Now().UnixNano())
	dir, _ := os.MkdirTemp("", "rk-example")
	defer os.RemoveAll(dir)

	// Some stamped messages, as rabbitkit's publisher would send them, plus a duplicate.
	conn, err := amqp.Dial(url)
	if err != nil {
		fmt.Println(err)
		return
	}
	defer conn.Close()
	ch, _ := conn.Channel()
	defer func() {
		_, _ = ch.QueueDelete(queue, false, false, false)
		_, _ = ch.QueueDelete(queue+".parked", false, false, false)
	}()
	_, _ = ch.QueueDeclare(queue, true, false, false, false, nil)
	for _, seq := range []int64{1, 2, 2, 3} {
		s := protocol.Stamp{Source: "shop", Epoch: 1, Stream: "orders", Seq: seq}
		_ = ch.Publish("", queue, false, false, amqp.Publishing{MessageId: s.String(), Body: fmt.Appendf(nil, "order %d", seq)})
	}

	c, err := consumer.New(consumer.Config{
		URLs:      []string{url},
		Queue:     queue,
		Topology:  topology.Topology{Queues: []topology.Queue{{Name: queue}}},
		StorePath: filepath.Join(dir, "consumer.db"),
		Logger:    slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	if err != nil {
		fmt.Println(err)
		return
	}
	defer c.Close(context.Background())

	ctx, cancel := context.WithCancel(context.Background())
	applied := 0
	err = c.RunTx(ctx, func(_ context.Context, tx *bolt.Tx, m *consumer.Message) error {
		b, err := tx.CreateBucketIfNotExists([]byte("orders"))
		if err != nil {
			return err
		}
		fmt.Printf("applying %s: %s\n", m.Stamp, m.Body)
		if applied++; applied == 3 {
			cancel() // Run drains: commits and acks what was handled, then returns
		}
		return b.Put([]byte(m.Stamp.String()), m.Body)
	})
	fmt.Println("run:", err)

	// Read back what the handler wrote, in a read transaction of the same store.
	err = c.View(context.Background(), func(tx *bolt.Tx) error {
		return tx.Bucket([]byte("orders")).ForEach(func(k, v []byte) error {
			fmt.Printf("stored %s: %s\n", k, v)
			return nil
		})
	})
	fmt.Println("view:", err)
	// Output:
	// applying rk2:shop:1:orders:1: order 1
	// applying rk2:shop:1:orders:2: order 2
	// applying rk2:shop:1:orders:3: order 3
	// run: <nil>
	// stored rk2:shop:1:orders:1: order 1
	// stored rk2:shop:1:orders:2: order 2
	// stored rk2:shop:1:orders:3: order 3
	// view: <nil>
}
