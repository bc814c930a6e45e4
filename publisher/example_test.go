package publisher_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strings"
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

// WaitReady tells a configuration that cannot connect (here a vhost that does not exist) from a
// broker that is only slow to answer: the error names the last connection error.
func ExamplePublisher_WaitReady() {
	dir, _ := os.MkdirTemp("", "rk-example")
	defer os.RemoveAll(dir)
	u, _ := url.Parse(brokerURL())
	u.Path = "/rk-example-no-such-vhost"
	p, err := publisher.New(publisher.Config{URLs: []string{u.String()}, Source: "example", JournalPath: filepath.Join(dir, "outbox.db")})
	if err != nil {
		fmt.Println(err)
		return
	}
	defer p.Close(context.Background())

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	err = p.WaitReady(ctx)
	var ae *amqp.Error
	fmt.Println("deadline:", errors.Is(err, context.DeadlineExceeded))
	fmt.Println("vhost refused:", errors.As(err, &ae) && ae.Code == amqp.NotAllowed)
	// Output:
	// deadline: true
	// vhost refused: true
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

// A message AMQP cannot carry is refused before it is journaled, with the reason.
func ExamplePublisher_Publish_invalid() {
	dir, _ := os.MkdirTemp("", "rk-example")
	defer os.RemoveAll(dir)
	p, err := publisher.New(publisher.Config{
		URLs: []string{brokerURL()}, Source: "example", JournalPath: filepath.Join(dir, "outbox.db"),
	})
	if err != nil {
		fmt.Println(err)
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	defer p.Close(ctx)

	_, err = p.Publish(ctx, publisher.Message{RoutingKey: strings.Repeat("k", 300), Body: []byte("x")})
	fmt.Println(errors.Is(err, publisher.ErrInvalidMessage), err)
	_, err = p.Publish(ctx, publisher.Message{RoutingKey: "orders", Expiration: "1.5", Body: []byte("x")})
	fmt.Println(errors.Is(err, publisher.ErrInvalidMessage), err)
	// Output:
	// true publisher: invalid message: routing key is 300 bytes; AMQP allows 255
	// true publisher: invalid message: expiration "1.5": RabbitMQ wants a TTL in milliseconds, a decimal integer such as "60000"
}

// TLS with a private CA and a client certificate (mutual TLS). The same Config.TLS field exists on
// consumer.Config.
func ExampleConfig_tls() {
	ca, err := os.ReadFile("/etc/rabbitkit/ca.pem")
	if err != nil {
		fmt.Println(err)
		return
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(ca)
	cert, err := tls.LoadX509KeyPair("/etc/rabbitkit/client.pem", "/etc/rabbitkit/client.key")
	if err != nil {
		fmt.Println(err)
		return
	}
	_, err = publisher.New(publisher.Config{
		URLs:        []string{"amqps://orders:secret@rabbit-1.internal:5671/", "amqps://orders:secret@rabbit-2.internal:5671/"},
		TLS:         &tls.Config{RootCAs: roots, Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12},
		Source:      "orders-api-1",
		JournalPath: "/var/lib/orders-api/outbox.db",
	})
	fmt.Println(err)
}
