package publisher_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/rabbitkit/rabbitkit/publisher"
	"github.com/rabbitkit/rabbitkit/topology"
)

func brokerURL() string {
	if u := os.Getenv("RABBITKIT_AMQP_URL"); u != "" {
		return u
	}
	return "amqp://guest:guest@127.0.0.1:5672/"
}

// Publish returns once the message is journaled; Wait returns once the broker confirmed it.
func Example() {
	dir, _ := os.MkdirTemp("", "rk-example")
	defer os.RemoveAll(dir)
	queue := fmt.Sprintf("rk-example-%d", time.Now().UnixNano())
	p, err := publisher.New(publisher.Config{
		URLs:        []string{brokerURL()},
		Source:      "example",
		JournalPath: filepath.Join(dir, "outbox.db"),
		Topology:    topology.Topology{Queues: []topology.Queue{{Name: queue}}},
	})
	if err != nil {
		fmt.Println(err)
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	defer p.Close(ctx)
	defer deleteQueue(queue)

	r, err := p.Publish(ctx, publisher.Message{RoutingKey: queue, Stream: "greetings", Body: []byte("hello")})
	if err != nil {
		fmt.Println("not accepted:", err)
		return
	}
	fmt.Println("journaled as", r.Stamp().Stream, r.Stamp().Seq)
	if err := r.Wait(ctx); err != nil {
		fmt.Println("not confirmed:", err)
		return
	}
	fmt.Println("confirmed")
	// Output:
	// journaled as greetings 1
	// confirmed
}

func deleteQueue(name string) {
	c, err := amqp.Dial(brokerURL())
	if err != nil {
		return
	}
	defer c.Close()
	if ch, err := c.Channel(); err == nil {
		_, _ = ch.QueueDelete(name, false, false, false)
	}
}
