// Command publisher is the reference publisher: it publishes a stream of messages through
// rabbitkit's publisher, which journals each one before Publish returns and sends it with publisher
// confirms, resending after any reconnect or restart.
//
// Usage:
//
//	publisher -source NAME -journal FILE -queue Q [-url URL] [-exchange E] [-routing-key K]
//	          [-queue-type classic|quorum] [-count N] [-rate R] [-size B] [-streams S]
//
// For every message, once Publish has returned (the message is journaled), it prints one line to
// stdout: "accepted <source> <epoch> <stream> <seq>". When everything is confirmed by the broker it
// prints "confirmed <n>" and exits 0. SIGTERM or SIGINT stop publishing new messages and close
// gracefully: what is not confirmed stays in the journal. Restarted on the same journal after any
// kind of death, it first sends what the journal holds; -count 0 only does that.
//
// With -pg DSN instead of -journal it publishes through the PostgreSQL transactional outbox
// (publisher/pgoutbox; see pg.go): each message in one transaction with a row of an example
// business table, the accepted line printed once COMMIT succeeded. Processes with the same -pg
// and -source are replicas sharing one outbox; each exits 0 with "confirmed <n>" once every
// message it committed was confirmed, whichever replica relayed it.
package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/rabbitkit/rabbitkit/examples/internal/cli"
	"github.com/rabbitkit/rabbitkit/examples/internal/metricsserve"
	"github.com/rabbitkit/rabbitkit/internal/history"
	"github.com/rabbitkit/rabbitkit/metrics"
	"github.com/rabbitkit/rabbitkit/protocol"
	"github.com/rabbitkit/rabbitkit/publisher"
	"github.com/rabbitkit/rabbitkit/publisher/pgoutbox"
	"github.com/rabbitkit/rabbitkit/topology"
)

type options struct {
	urls        string
	source      string
	journal     string
	exchange    string
	routingKey  string
	queue       string
	queueType   string
	count       int
	rate        float64
	size        int
	streams     int
	inFlight    int
	closeWait   time.Duration
	statsEvery  time.Duration
	verbose     bool
	partitions  int
	pg          string
	pgTable     string
	metricsAddr string
	leaseTTL    time.Duration
}

func main() {
	var o options
	fs := flag.NewFlagSet("publisher", flag.ContinueOnError)
	fs.StringVar(&o.urls, "url", "amqp://guest:guest@127.0.0.1:5672/", "broker URL; several separated by commas (a cluster, tried in turn). TLS: amqps://host:5671/?cacertfile=CA.pem&certfile=C.pem&keyfile=K.pem")
	fs.StringVar(&o.source, "source", "", "stable name of this publisher (rk-source); required")
	fs.StringVar(&o.journal, "journal", "", "journal file (created if missing); required unless -pg. Reuse it after a crash: what it holds is sent first")
	fs.StringVar(&o.exchange, "exchange", "rabbitkit.example", "exchange to publish to (declared durable, direct)")
	fs.StringVar(&o.routingKey, "routing-key", "", "routing key (default: the queue name)")
	fs.StringVar(&o.queue, "queue", "", "queue to declare and bind to the exchange with the routing key; empty: declare nothing but the exchange")
	fs.StringVar(&o.queueType, "queue-type", topology.Classic, "type of the queue to declare: classic or quorum")
	fs.IntVar(&o.count, "count", 1000, "new messages to publish in this run; 0 = only send what the journal holds")
	fs.Float64Var(&o.rate, "rate", 0, "messages per second (0 = as fast as the journal takes them)")
	fs.IntVar(&o.size, "size", 256, "body bytes")
	fs.IntVar(&o.streams, "streams", 1, "spread messages round-robin over this many streams (sequence spaces)")
	fs.IntVar(&o.partitions, "partitions", 0, "route to N partition queues <queue>.0..N-1 of -exchange (topology.Partitions, declared with x-single-active-consumer), each stream to FNV-1a(stream) mod N; needs -queue as the prefix")
	fs.IntVar(&o.inFlight, "in-flight", publisher.DefaultMaxInFlight, "unconfirmed messages allowed on the channel")
	fs.DurationVar(&o.closeWait, "close-timeout", 10*time.Second, "on SIGTERM/SIGINT, how long to wait for confirms of messages in flight")
	fs.DurationVar(&o.statsEvery, "stats-every", 0, "print \"stats confirmed=N resent=N unknown=N reconnects=N\" to stderr this often (0: never)")
	fs.BoolVar(&o.verbose, "v", false, "log at debug level")
	fs.StringVar(&o.metricsAddr, "metrics-addr", "", "serve Prometheus metrics on this address (host:port) at /metrics; empty: none")
	fs.StringVar(&o.pg, "pg", "", "PostgreSQL DSN: publish through the transactional outbox (publisher/pgoutbox) instead of a journal; -journal must then be unset. "+
		"Each message is inserted in one transaction with a row of the example table "+pgOrdersTable+" (created if missing), and its accepted line printed once COMMIT succeeded "+
		"(a COMMIT whose outcome was lost is settled with pg_xact_status: accepted if it committed, else another message is published). "+
		"Processes with the same -pg and -source are replicas of one service sharing one outbox: all write, one at a time relays (a lease). "+
		"A run exits 0 printing \"confirmed <n>\" once every message it committed is confirmed, whichever replica sent it; -count 0 waits until the outbox holds nothing pending")
	fs.StringVar(&o.pgTable, "pg-table", pgoutbox.DefaultTable, "with -pg: the outbox table (schema.name allowed)")
	fs.DurationVar(&o.leaseTTL, "lease-ttl", pgoutbox.DefaultLeaseTTL, "with -pg: the relay lease's lifetime; another replica takes over within about 1.2x this after the relay's process dies")
	cli.Parse(fs, "Usage:\n  publisher -source NAME -journal FILE -queue Q [flags]\n  publisher -source NAME -pg DSN -queue Q [flags]\n\n"+
		"Prints \"accepted <source> <epoch> <stream> <seq>\" per journaled message and \"confirmed <n>\"\n"+
		"once the broker confirmed everything.\n", os.Args[1:])
	cli.Exit("publisher", run(o), 1)
}

func run(o options) error {
	switch {
	case o.source == "":
		return errors.New("-source is required")
	case o.journal == "" && o.pg == "":
		return errors.New("-journal (or -pg) is required")
	case o.journal != "" && o.pg != "":
		return errors.New("-journal and -pg exclude each other: -pg publishes through the PostgreSQL outbox")
	case o.count < 0 || o.size < 0 || o.rate < 0 || o.streams < 1:
		return errors.New("-count, -size and -rate must be >= 0, -streams >= 1")
	}
	// Before anything slow: a SIGTERM that arrives during start-up must stop gracefully (exit 0),
	// not kill the process with Go's default action.
	sig, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	level := slog.LevelInfo
	if o.verbose {
		level = slog.LevelDebug
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
	key := o.routingKey
	if key == "" {
		key = o.queue
	}
	topo := topology.Topology{Exchanges: []topology.Exchange{{Name: o.exchange}}}
	var parts *topology.Partitions
	if o.partitions > 0 {
		parts = &topology.Partitions{Exchange: o.exchange, Queue: o.queue, Count: o.partitions, Type: o.queueType}
		if err := parts.Validate(); err != nil {
			return fmt.Errorf("-partitions: %w", err)
		}
		topo = parts.Topology()
	} else if o.queue != "" {
		topo.Queues = []topology.Queue{{Name: o.queue, Type: o.queueType}}
		topo.Bindings = []topology.Binding{{Queue: o.queue, Exchange: o.exchange, Key: key}}
	}
	promRec, stopMetrics, err := metricsserve.Start(o.metricsAddr, log)
	if err != nil {
		return err
	}
	defer stopMetrics()
	if o.pg != "" {
		return runPG(sig, o, log, topo, parts, key, promRec)
	}

	var mem metrics.Memory
	p, err := publisher.New(publisher.Config{
		URLs:        strings.Split(o.urls, ","),
		Source:      o.source,
		JournalPath: o.journal,
		Topology:    topo,
		Logger:      log,
		Metrics:     metrics.Multi(&mem, promRec),
		MaxInFlight: o.inFlight,
		OnParked: func(pe *publisher.ParkedError) {
			log.Error("message parked", "err", pe)
		},
	})
	if err != nil {
		return err
	}
	closed := false
	defer func() {
		if !closed {
			_ = p.Close(context.Background())
		}
	}()

	// The printer prints each receipt's accepted line once it is journaled, in publish order,
	// flushing stdout whenever it has caught up (a process killed before a flush loses lines of
	// journaled messages, which the chaos checker allows for killed publishers only).
	receipts := make(chan *publisher.Receipt, 1024)
	var printErr error
	var wg sync.WaitGroup
	wg.Go(func() { printErr = printAccepted(receipts) })

	defer startStats(&mem, o.statsEvery)()

	start := time.Now()
	base := protocol.DefaultStream(o.exchange, key)
	published := 0
publish:
	for i := 0; i < o.count; i++ {
		if o.rate > 0 {
			due := start.Add(time.Duration(float64(i) / o.rate * float64(time.Second)))
			select {
			case <-sig.Done():
				break publish
			case <-time.After(time.Until(due)):
			}
		} else if sig.Err() != nil {
			break
		}
		stream := base
		if o.streams > 1 {
			stream = base + "#" + strconv.Itoa(i%o.streams)
		}
		body := makeBody(o.size, o.source, i) // the publisher owns it until journaled: never reuse
		// Not sig: a context ending while the journal writes the message would leave its fate
		// unknown to this run. PublishAsync only waits for room in the accept buffer.
		rk := key
		if parts != nil {
			rk = parts.RoutingKey(stream)
		}
		r := p.PublishAsync(context.Background(), publisher.Message{
			Exchange: o.exchange, RoutingKey: rk, Stream: stream, Body: body,
		})
		receipts <- r
		published++
	}
	close(receipts)
	wg.Wait()
	if printErr != nil {
		return printErr
	}

	// Wait until the journal holds nothing pending: every message of this run and whatever an
	// earlier run left is confirmed (or parked, which is reported and fails the run).
	waitDrained(sig, p, log)
	if sig.Err() != nil {
		closed = true
		ctx, cancel := context.WithTimeout(context.Background(), o.closeWait)
		defer cancel()
		err := p.Close(ctx)
		st := p.Journal().Stats()
		log.Info("interrupted: closed gracefully", "published", published, "confirmed", mem.Get(publisher.MetricConfirmed),
			"left_in_journal", st.Pending, "close_err", err)
		return nil
	}

	st := p.Stats()
	closed = true
	ctx, cancel := context.WithTimeout(context.Background(), o.closeWait)
	defer cancel()
	if err := p.Close(ctx); err != nil {
		return err
	}
	if st.Parked > 0 {
		return fmt.Errorf("%d messages parked: list them with `rabbitkit journal parked %s`, fix the cause, then `rabbitkit journal redrive %s all` and run again", st.Parked, o.journal, o.journal)
	}
	fmt.Printf("confirmed %d\n", st.Confirmed)
	return nil
}

// printAccepted prints an accepted line per journaled receipt, in order.
func printAccepted(receipts <-chan *publisher.Receipt) error {
	w := bufio.NewWriterSize(os.Stdout, 64<<10)
	var failed error
	for r := range receipts {
		if failed != nil {
			continue // keep draining so the publishing loop never blocks
		}
		if len(receipts) == 0 {
			if err := w.Flush(); err != nil {
				failed = err
				continue
			}
		}
		if err := r.WaitJournaled(context.Background()); err != nil {
			failed = fmt.Errorf("journal: %w", err)
			continue
		}
		_, _ = w.WriteString(history.FormatAccepted(r.Stamp()) + "\n")
	}
	if err := w.Flush(); err != nil && failed == nil {
		failed = err
	}
	return failed
}

// waitDrained waits with Flush until everything journaled has a final outcome (confirmed or
// parked), or sig ends, logging progress every 5 s. Flush waits on the receipts' frontier: nothing
// is polled.
func waitDrained(sig context.Context, p *publisher.Publisher, log *slog.Logger) {
	for {
		ctx, cancel := context.WithTimeout(sig, 5*time.Second)
		err := p.Flush(ctx)
		cancel()
		switch {
		case err == nil, sig.Err() != nil:
			return // drained, or interrupted: Close leaves the rest journaled; the caller reports it
		case !errors.Is(err, context.DeadlineExceeded):
			log.Warn("flush", "err", err)
			return
		}
		log.Info("waiting for confirms", "pending", p.Journal().Backlog().Pending, "state", p.State(), "blocked", p.Blocked())
	}
}

// makeBody returns a recognisable body of size bytes: source and index, then padding.
func makeBody(size int, source string, i int) []byte {
	b := make([]byte, size)
	n := copy(b, source+" "+strconv.Itoa(i)+" ")
	for j := n; j < len(b); j++ {
		b[j] = 'x'
	}
	return b
}

// startStats prints "stats confirmed=N resent=N unknown=N reconnects=N" to stderr every d (not at
// all when d is 0), and once more when the returned stop is called.
func startStats(mem *metrics.Memory, d time.Duration) (stop func()) {
	if d <= 0 {
		return func() {}
	}
	stats := func() {
		fmt.Fprintf(os.Stderr, "stats confirmed=%.0f resent=%.0f unknown=%.0f reconnects=%.0f\n",
			mem.Get(publisher.MetricConfirmed), mem.Get(publisher.MetricResent),
			mem.Get(publisher.MetricUnknown), mem.Get(publisher.MetricReconnects))
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() {
		t := time.NewTicker(d)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				stats()
			}
		}
	})
	return func() {
		cancel()
		wg.Wait()
		stats()
	}
}
