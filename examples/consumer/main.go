// Command consumer is the reference consumer: it consumes a queue through rabbitkit's consumer with
// a transactional handler whose effect is a ledger (internal/ledger), written in the same
// transaction as the dedup mark: a counter per message in the consumer's bbolt file (-store), or
// one row per message in a PostgreSQL table with no unique constraint (-pg, the PostgreSQL inbox
// consumer/pginbox). Every message's count must therefore end at exactly 1, whatever crashes in
// between. With -pg, any number of processes started with the same -pg and -queue are competing
// consumers sharing one dedup state (per-stream order is then not kept across them).
//
// Usage:
//
//	consumer -queue Q -store FILE [-url URL] [-queue-type classic|quorum] [-prefetch N] [-exit-idle D]
//	consumer -queue Q -pg DSN [-pg-table T] [flags]
//	consumer -dump -store FILE
//	consumer -dump -pg DSN
//
// Gaps are printed to stderr as "gap <source> <epoch> <stream> <from> <to>", late arrivals as
// "late <source> <epoch> <stream> <seq>", duplicates whose body differs from the handled one (a
// sequence number reused by the publisher) as "conflict <source> <epoch> <stream> <seq>". -dump
// prints the ledger, one line per message, "<source> <epoch> <stream> <seq> <count>", and exits.
// SIGTERM or SIGINT drain gracefully: the handlers running finish, their marks commit and are
// acked, the rest is redelivered later.
package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/rabbitkit/rabbitkit/consumer"
	"github.com/rabbitkit/rabbitkit/consumer/dedup"
	"github.com/rabbitkit/rabbitkit/examples/internal/cli"
	"github.com/rabbitkit/rabbitkit/examples/internal/metricsserve"
	"github.com/rabbitkit/rabbitkit/internal/history"
	"github.com/rabbitkit/rabbitkit/internal/ledger"
	"github.com/rabbitkit/rabbitkit/metrics"
	"github.com/rabbitkit/rabbitkit/protocol"
	"github.com/rabbitkit/rabbitkit/topology"
)

type options struct {
	urls        string
	metricsAddr string
	queue       string
	queueType   string
	exchange    string
	routingKey  string
	store       string
	pg          string
	pgTable     string
	ledger      string
	partitions  int
	member      string
	prefetch    int
	workers     int
	exitIdle    time.Duration
	statsEvery  time.Duration
	gapGrace    time.Duration
	dump        bool
	verbose     bool
}

func main() {
	var o options
	fs := flag.NewFlagSet("consumer", flag.ContinueOnError)
	fs.StringVar(&o.urls, "url", "amqp://guest:guest@127.0.0.1:5672/", "broker URL; several separated by commas (a cluster, tried in turn). TLS: amqps://host:5671/?cacertfile=CA.pem&certfile=C.pem&keyfile=K.pem")
	fs.StringVar(&o.queue, "queue", "", "queue to consume (declared durable if missing); required unless -dump")
	fs.StringVar(&o.queueType, "queue-type", topology.Classic, "type of the queue to declare: classic or quorum")
	fs.StringVar(&o.exchange, "exchange", "", "if set, declare this direct exchange and bind the queue to it with -routing-key")
	fs.StringVar(&o.routingKey, "routing-key", "", "binding key used with -exchange (default: the queue name)")
	fs.StringVar(&o.store, "store", "", "bbolt file holding the dedup state and the ledger (created if missing); this or -pg is required")
	fs.StringVar(&o.pg, "pg", "", "PostgreSQL DSN (postgres://user@host:5432/db): keep the dedup state and the ledger there, in one transaction per batch, shared by every process started with the same -pg and -queue (competing consumers)")
	fs.StringVar(&o.pgTable, "pg-table", "", "with -pg: the inbox table (default rabbitkit_inbox; rabbitkit creates and migrates it)")
	fs.StringVar(&o.ledger, "ledger-table", ledger.DefaultPGTable, "with -pg: the ledger table (one row per applied message, no unique constraint)")
	fs.IntVar(&o.partitions, "partitions", 0, "with -pg and -exchange: consume the N partition queues <queue>.0..N-1 (x-single-active-consumer) as one member of a group: the partitions are spread over every process started with the same -pg, -queue and -partitions, per-stream order is kept, and a dead member's partitions move to the others within ~12 s")
	fs.StringVar(&o.member, "member", "", "with -partitions: this process's name in the group (default host-pid-random)")
	fs.IntVar(&o.prefetch, "prefetch", consumer.DefaultPrefetch, "deliveries in flight (basic.qos)")
	fs.IntVar(&o.workers, "workers", 1, "handler goroutines (per-stream order is kept)")
	fs.DurationVar(&o.exitIdle, "exit-idle", 0, "exit 0 after no message for this long (0: run until SIGTERM/SIGINT)")
	fs.DurationVar(&o.statsEvery, "stats-every", 0, "print \"stats handled=N duplicates=N redeliveries=N reconnects=N\" to stderr this often (0: never)")
	fs.DurationVar(&o.gapGrace, "gap-grace", dedup.DefaultGapGrace, "how long a missing sequence range may stay open before it is reported as a gap")
	fs.BoolVar(&o.dump, "dump", false, "print the ledger (<source> <epoch> <stream> <seq> <count>) and exit")
	fs.BoolVar(&o.verbose, "v", false, "log at debug level")
	fs.StringVar(&o.metricsAddr, "metrics-addr", "", "serve Prometheus metrics on this address (host:port) at /metrics; empty: none")
	cli.Parse(fs, "Usage:\n  consumer -queue Q -store FILE [flags]\n  consumer -queue Q -pg DSN [flags]\n  consumer -dump -store FILE | -pg DSN\n\n"+
		"Consumes with exactly-once effects: the message's ledger entry (a counter in the bbolt file, or a\n"+
		"row in PostgreSQL) is written in the same transaction that marks the message handled.\n", os.Args[1:])
	cli.Exit("consumer", run(o), 1)
}

func run(o options) error {
	if (o.store == "") == (o.pg == "") {
		return errors.New("one of -store and -pg is required")
	}
	if o.partitions > 0 && o.pg == "" {
		return errors.New("-partitions needs -pg (the group's leases and shared dedup state live there)")
	}
	if o.dump {
		if o.pg != "" {
			return dumpPG(context.Background(), os.Stdout, o)
		}
		return dump(os.Stdout, o.store)
	}
	if o.queue == "" {
		return errors.New("-queue is required")
	}
	// Before anything slow: a SIGTERM that arrives during start-up must stop gracefully (exit 0),
	// not kill the process with Go's default action.
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	level := slog.LevelInfo
	if o.verbose {
		level = slog.LevelDebug
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))

	topo := topology.Topology{Queues: []topology.Queue{{Name: o.queue, Type: o.queueType}}}
	if o.exchange != "" {
		key := o.routingKey
		if key == "" {
			key = o.queue
		}
		topo.Exchanges = []topology.Exchange{{Name: o.exchange}}
		topo.Bindings = []topology.Binding{{Queue: o.queue, Exchange: o.exchange, Key: key}}
	}

	promRec, stopMetrics, err := metricsserve.Start(o.metricsAddr, log)
	if err != nil {
		return err
	}
	defer stopMetrics()
	out := &lineOut{w: os.Stderr}
	var mem metrics.Memory
	cfg := consumer.Config{
		URLs:           strings.Split(o.urls, ","),
		Queue:          o.queue,
		Topology:       topo,
		Prefetch:       o.prefetch,
		Workers:        o.workers,
		StorePath:      o.store,
		Dedup:          dedup.Config{GapGrace: o.gapGrace},
		ConnectionName: "rabbitkit-example-consumer",
		Logger:         log,
		Metrics:        metrics.Multi(&mem, promRec),
		OnGap: func(e dedup.Event) {
			out.line(history.FormatGap(history.Gap{Source: e.Key.Source, Epoch: e.Epoch, Stream: e.Key.Stream, From: e.From, To: e.To}))
		},
		OnLate: func(e dedup.Event) {
			out.line(fmt.Sprintf("late %s %d %s %d", history.Escape(e.Key.Source), e.Epoch, history.Escape(e.Key.Stream), e.From))
		},
		OnParked: func(p consumer.Parked) {
			log.Error("message parked", "stamp", p.Stamp, "reason", p.Reason, "queue", p.Queue)
		},
		OnConflict: func(cf consumer.Conflict) {
			out.line(history.FormatConflict(cf.Stamp))
			log.Error("duplicate with a different body", "stamp", cf.Stamp,
				"first_hash", fmt.Sprintf("%x", cf.FirstHash), "dup_hash", fmt.Sprintf("%x", cf.DupHash))
		},
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var last atomic.Int64 // unix nanos of the last handled message
	last.Store(time.Now().UnixNano())
	var runTx func(ctx context.Context) error
	if o.pg != "" {
		cleanup, rt, err := pgBackend(ctx, o, cfg, log, &last)
		if err != nil {
			return err
		}
		defer cleanup()
		runTx = rt
	} else {
		c, err := consumer.New(cfg)
		if err != nil {
			return err
		}
		defer c.Close(context.Background())
		runTx = func(ctx context.Context) error {
			return c.RunTx(ctx, func(_ context.Context, tx *bolt.Tx, m *consumer.Message) error {
				last.Store(time.Now().UnixNano())
				if !m.Stamped {
					return nil // not published through rabbitkit: nothing to count
				}
				_, err := ledger.Increment(tx, m.Stamp)
				return err
			})
		}
	}

	var wg sync.WaitGroup
	if o.exitIdle > 0 {
		wg.Go(func() { exitWhenIdle(ctx, cancel, &last, o.exitIdle, log) })
	}
	stats := func() {
		out.line(fmt.Sprintf("stats handled=%.0f duplicates=%.0f redeliveries=%.0f reconnects=%.0f",
			mem.Get(consumer.MetricHandled), mem.Get(consumer.MetricDuplicates),
			mem.Get(consumer.MetricRedeliveries), mem.Get(consumer.MetricReconnects)))
	}
	if o.statsEvery > 0 {
		wg.Go(func() { every(ctx, o.statsEvery, stats) })
	}
	err = runTx(ctx)
	cancel()
	wg.Wait()
	if o.statsEvery > 0 {
		stats()
	}
	log.Info("consumer stopped",
		"handled", mem.Get(consumer.MetricHandled),
		"duplicates_dropped", mem.Get(consumer.MetricDuplicates),
		"gaps", mem.Get(consumer.MetricGaps),
		"late", mem.Get(consumer.MetricLate),
		"redeliveries", mem.Get(consumer.MetricRedeliveries),
		"reconnects", mem.Get(consumer.MetricReconnects),
		"parked", mem.Get(consumer.MetricParked))
	return err
}

// exitWhenIdle cancels the run once no message was handled for idle.
func exitWhenIdle(ctx context.Context, cancel context.CancelFunc, last *atomic.Int64, idle time.Duration, log *slog.Logger) {
	t := time.NewTicker(min(idle/4+time.Millisecond, 250*time.Millisecond))
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			if since := time.Since(time.Unix(0, last.Load())); since >= idle {
				log.Info("idle, exiting", "idle", since.Round(time.Millisecond))
				cancel()
				return
			}
		}
	}
}

// every calls fn every d until ctx ends.
func every(ctx context.Context, d time.Duration, fn func()) {
	t := time.NewTicker(d)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			fn()
		}
	}
}

// dump prints the ledger of the store file. The file must not be open in another process.
func dump(w io.Writer, path string) error {
	if _, err := os.Stat(path); err != nil {
		return err
	}
	bw := bufio.NewWriter(w)
	// ViewBoltFile validates the file first and turns a fault on a corrupt page into an error.
	err := consumer.ViewBoltFile(path, func(tx *bolt.Tx) error {
		return ledger.Dump(tx, func(s protocol.Stamp, n int64) error {
			_, err := bw.WriteString(history.FormatApplied(history.Applied{Stamp: s, Count: n}) + "\n")
			return err
		})
	})
	if err != nil {
		return err
	}
	return bw.Flush()
}

// lineOut writes whole lines to w under a lock, so that lines from callbacks never interleave
// with each other (slog's handler locks its own writes the same way).
type lineOut struct {
	mu sync.Mutex
	w  io.Writer
}

func (o *lineOut) line(s string) {
	o.mu.Lock()
	defer o.mu.Unlock()
	_, _ = io.WriteString(o.w, s+"\n")
}
