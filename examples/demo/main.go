// Command demo shows rabbitkit's guarantee holding while the network misbehaves. It starts a
// publisher and a consumer in one process, both talking to RabbitMQ through an in-process
// toxiproxy that cuts, resets, black-holes and refuses their connections every few seconds. The
// consumer's handler is transactional: it counts every message in a ledger in the same bbolt
// transaction that records the message as handled. At the end the demo compares what Publish
// accepted with the ledger and prints a verdict: every accepted message must have been applied
// exactly once. It exits 1 if anything was lost or applied twice.
//
// Usage:
//
//	demo [-url amqp://guest:guest@127.0.0.1:5672/] [-duration 30s] [-rate 500] [-queue-type classic]
//
// It declares a uniquely named exchange and queue on the broker and deletes them when it ends.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"os"
	"os/signal"
	"strconv"
	"syscall"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/rabbitkit/rabbitkit/examples/internal/cli"
	"github.com/rabbitkit/rabbitkit/topology"
)

type options struct {
	url        string
	duration   time.Duration
	rate       float64
	queueType  string
	faultEvery time.Duration
	settle     time.Duration
	keep       bool
	verbose    bool
}

func main() {
	var o options
	fs := flag.NewFlagSet("demo", flag.ContinueOnError)
	fs.StringVar(&o.url, "url", "amqp://guest:guest@127.0.0.1:5672/", "RabbitMQ to run against")
	fs.DurationVar(&o.duration, "duration", 30*time.Second, "how long to publish under faults")
	fs.Float64Var(&o.rate, "rate", 500, "messages per second to publish")
	fs.StringVar(&o.queueType, "queue-type", topology.Classic, "queue type: classic or quorum")
	fs.DurationVar(&o.faultEvery, "fault-every", 3*time.Second, "mean quiet time between two faults")
	fs.DurationVar(&o.settle, "settle", 90*time.Second, "after publishing, how long to wait for everything to be confirmed and applied")
	fs.BoolVar(&o.keep, "keep", false, "keep the queue, exchange and files (for inspection) instead of deleting them")
	fs.BoolVar(&o.verbose, "v", false, "show the publisher's and consumer's logs (reconnects, ...) on stderr")
	cli.Parse(fs, "Usage:\n  demo [flags]\n\n"+
		"Publishes and consumes through a faulty proxy, then checks that every accepted message was\n"+
		"applied exactly once. Exit status 1 if not.\n", os.Args[1:])
	ok, err := run(o)
	cli.Exit("demo", err, 2)
	if !ok {
		os.Exit(1)
	}
}

func run(o options) (bool, error) {
	if o.duration <= 0 || o.rate <= 0 || o.faultEvery <= 0 {
		return false, errors.New("-duration, -rate and -fault-every must be positive")
	}
	uri, err := amqp.ParseURI(o.url)
	if err != nil {
		return false, fmt.Errorf("-url: %w", err)
	}
	if err := ping(o.url); err != nil {
		return false, fmt.Errorf("no RabbitMQ answers at %s (run `make demo`, which starts one, or pass -url): %w", redact(o.url), err)
	}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()

	logOut := io.Discard
	if o.verbose {
		logOut = os.Stderr
	}
	log := slog.New(slog.NewTextHandler(logOut, nil))

	dir, err := os.MkdirTemp("", "rabbitkit-demo-")
	if err != nil {
		return false, err
	}
	var suffix [4]byte
	for i := range suffix {
		suffix[i] = "0123456789abcdef"[rand.IntN(16)]
	}
	name := "rabbitkit-demo-" + string(suffix[:]) + strconv.Itoa(os.Getpid())
	defer func() {
		if o.keep {
			fmt.Printf("kept: queue %s, exchange %s, files in %s\n", name, name, dir)
			return
		}
		cleanup(o.url, name)
		_ = os.RemoveAll(dir)
	}()

	proxy, err := newFaultProxy(net.JoinHostPort(uri.Host, strconv.Itoa(uri.Port)))
	if err != nil {
		return false, err
	}
	defer proxy.close()
	viaProxy := uri
	viaProxy.Host, viaProxy.Port = splitHostPort(proxy.Addr())

	d := &demo{o: o, name: name, dir: dir, url: viaProxy.String(), log: log, proxy: proxy}
	return d.run(ctx)
}

// ping checks that the broker answers.
func ping(url string) error {
	c, err := amqp.DialConfig(url, amqp.Config{Dial: amqp.DefaultDial(5 * time.Second)})
	if err != nil {
		return err
	}
	return c.Close()
}

// cleanup deletes the demo's queues and exchange, straight on the broker (not through the proxy).
func cleanup(url, name string) {
	c, err := amqp.DialConfig(url, amqp.Config{Dial: amqp.DefaultDial(5 * time.Second)})
	if err != nil {
		fmt.Fprintf(os.Stderr, "demo: could not delete queue and exchange %s: %v\n", name, err)
		return
	}
	defer c.Close()
	ch, err := c.Channel()
	if err != nil {
		return
	}
	defer ch.Close()
	for _, q := range []string{name, name + ".parked"} {
		_, _ = ch.QueueDelete(q, false, false, false)
	}
	_ = ch.ExchangeDelete(name, false, false)
}

func splitHostPort(addr string) (string, int) {
	host, port, _ := net.SplitHostPort(addr)
	p, _ := strconv.Atoi(port)
	return host, p
}

// redact hides the password of a URL for messages.
func redact(url string) string {
	u, err := amqp.ParseURI(url)
	if err != nil {
		return "(invalid URL)"
	}
	if u.Password != "" {
		u.Password = "xxxxx"
	}
	return u.String()
}
