// Command httpservice is a small HTTP service that accepts requests and publishes them through
// rabbitkit. It answers 202 Accepted as soon as the message is safe: the broker may be down,
// restarting or unreachable, and the request will still reach the broker, in order, once it is
// back, even if this process crashes first. Two modes:
//
//   - -journal FILE: the message is journaled in a local bbolt file (restart the process on the
//     same journal);
//   - -pg DSN: each request is an order. One PostgreSQL transaction inserts the order row (table
//     httpservice_orders) and its "order created" message (publisher/pgoutbox), so both exist or
//     neither does; 202 comes at COMMIT. Every replica started with the same -pg and -source
//     writes, and one of them relays (a lease); no local disk is needed.
//
// Usage:
//
//	httpservice -source NAME (-journal FILE | -pg DSN) [-listen 127.0.0.1:8080] [-url URL]
//	            [-exchange E] [-routing-key K] [-queue Q] [-queue-type classic|quorum]
//
// Endpoints:
//
//	POST /messages   body = message body; 202 {"stamp":"rk2:...", "source":..., "epoch":..., "stream":..., "seq":...}
//	                 (-pg: also "order_id"); 400 for a message the kit refuses
//	                 503 nothing was written, retry: the journal is full (the broker has been away
//	                 long enough to fill it), or (-pg) the database is unreachable or the
//	                 transaction failed or did not commit
//	                 504 the outcome is unknown: the 5 s deadline hit while journaling, or (-pg)
//	                 the COMMIT's outcome was lost and could not be settled
//	GET  /healthz    200 {"state" or "relaying", "pending", "parked", "oldest_pending_seconds", ...}
//
// SIGTERM or SIGINT: stop accepting requests, finish those in progress, close the publisher
// (unconfirmed messages stay in the journal or the outbox for the next start or another replica).
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/rabbitkit/rabbitkit/examples/internal/cli"
	"github.com/rabbitkit/rabbitkit/examples/internal/metricsserve"
	"github.com/rabbitkit/rabbitkit/journal"
	"github.com/rabbitkit/rabbitkit/protocol"
	"github.com/rabbitkit/rabbitkit/publisher"
	"github.com/rabbitkit/rabbitkit/topology"
)

type options struct {
	listen      string
	urls        string
	source      string
	journal     string
	exchange    string
	routingKey  string
	queue       string
	queueType   string
	maxBody     int64
	metricsAddr string
	pg          string
	leaseTTL    time.Duration
}

func main() {
	var o options
	fs := flag.NewFlagSet("httpservice", flag.ContinueOnError)
	fs.StringVar(&o.listen, "listen", "127.0.0.1:8080", "HTTP listen address (port 0: pick a free one; the address is logged)")
	fs.StringVar(&o.urls, "url", "amqp://guest:guest@127.0.0.1:5672/", "broker URL; several separated by commas. TLS: amqps://host:5671/?cacertfile=CA.pem&certfile=C.pem&keyfile=K.pem")
	fs.StringVar(&o.source, "source", "", "stable name of this service instance (rk-source); required")
	fs.StringVar(&o.journal, "journal", "", "journal file (created if missing); this or -pg is required")
	fs.StringVar(&o.pg, "pg", "", "PostgreSQL DSN: publish through the transactional outbox, each request an order row and its message in one transaction (no -journal)")
	fs.DurationVar(&o.leaseTTL, "lease-ttl", 0, "-pg: the relay lease's TTL (default pgoutbox's, 10s)")
	fs.StringVar(&o.exchange, "exchange", "rabbitkit.example", "exchange to publish to (declared durable, direct)")
	fs.StringVar(&o.routingKey, "routing-key", "", "routing key (default: the queue name)")
	fs.StringVar(&o.queue, "queue", "", "queue to declare and bind; empty: declare only the exchange")
	fs.StringVar(&o.queueType, "queue-type", topology.Classic, "type of the queue to declare: classic or quorum")
	fs.Int64Var(&o.maxBody, "max-body", 1<<20, "largest request body accepted, in bytes")
	fs.StringVar(&o.metricsAddr, "metrics-addr", "", "serve Prometheus metrics on this address (host:port) at /metrics; empty: none")
	cli.Parse(fs, "Usage:\n  httpservice -source NAME (-journal FILE | -pg DSN) [flags]\n\n"+
		"POST /messages answers 202 once the body is journaled (or committed with its order row), whether the broker is up or not.\n", os.Args[1:])
	cli.Exit("httpservice", run(o), 1)
}

func run(o options) error {
	if o.source == "" || (o.journal == "") == (o.pg == "") {
		return errors.New("-source and one of -journal and -pg are required")
	}
	// Before anything slow: a SIGTERM that arrives during start-up must stop gracefully (exit 0),
	// not kill the process with Go's default action.
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	key := o.routingKey
	if key == "" {
		key = o.queue
	}
	topo := topology.Topology{Exchanges: []topology.Exchange{{Name: o.exchange}}}
	if o.queue != "" {
		topo.Queues = []topology.Queue{{Name: o.queue, Type: o.queueType}}
		topo.Bindings = []topology.Binding{{Queue: o.queue, Exchange: o.exchange, Key: key}}
	}
	rec, stopMetrics, err := metricsserve.Start(o.metricsAddr, log)
	if err != nil {
		return err
	}
	defer stopMetrics()
	var b backend
	if o.pg != "" {
		pb, closePG, err := openPG(ctx, o, log, topo, rec)
		if err != nil {
			return err
		}
		defer closePG()
		b = pb
	} else {
		pub, err := publisher.New(publisher.Config{
			URLs: strings.Split(o.urls, ","), Source: o.source, JournalPath: o.journal, Topology: topo, Logger: log, Metrics: rec,
			OnParked: func(pe *publisher.ParkedError) { log.Error("message parked", "err", pe) },
		})
		if err != nil {
			return err
		}
		defer func() {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			if err := pub.Close(ctx); err != nil {
				log.Warn("publisher closed with messages left in the journal", "err", err)
			}
		}()
		b = journalBackend{pub: pub, log: log}
	}

	ln, err := net.Listen("tcp", o.listen)
	if err != nil {
		return err
	}
	s := &service{b: b, exchange: o.exchange, key: key, maxBody: o.maxBody}
	srv := &http.Server{Handler: s.routes(), ReadHeaderTimeout: 10 * time.Second}
	log.Info("listening", "addr", ln.Addr().String())

	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }() // joined below through errc
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	shutCtx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	err = srv.Shutdown(shutCtx)
	if serveErr := <-errc; !errors.Is(serveErr, http.ErrServerClosed) && err == nil {
		err = serveErr
	}
	return err
}

type service struct {
	b        backend
	exchange string
	key      string
	maxBody  int64
}

// backend makes a message safe: the journal, or an order row and the outbox.
type backend interface {
	// accept answers the request: 202 with the message's identity once it is safe, or an error
	// status (503: nothing was written, retry; 504: unknown; 400: refused).
	accept(ctx context.Context, msg publisher.Message) (code int, body map[string]any, err error)
	health(ctx context.Context) map[string]any
}

func (s *service) routes() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("POST /messages", s.post)
	mux.HandleFunc("GET /healthz", s.health)
	return mux
}

// post makes the request body safe and answers 202 with the message's identity.
func (s *service) post(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, s.maxBody))
	if err != nil {
		http.Error(w, "body: "+err.Error(), http.StatusRequestEntityTooLarge)
		return
	}
	// Journaling (or a short transaction) takes milliseconds; only a full journal (a long
	// outage) or an unreachable database makes it wait.
	ctx, cancel := context.WithTimeout(r.Context(), 5*time.Second)
	defer cancel()
	code, v, err := s.b.accept(ctx, publisher.Message{
		Exchange: s.exchange, RoutingKey: s.key, Body: body,
		ContentType: r.Header.Get("Content-Type"), CorrelationID: r.Header.Get("X-Request-Id"),
	})
	if err != nil {
		if code == http.StatusServiceUnavailable {
			w.Header().Set("Retry-After", "5")
		}
		http.Error(w, err.Error(), code)
		return
	}
	writeJSON(w, code, v)
}

func (s *service) health(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, s.b.health(r.Context()))
}

func stampJSON(st protocol.Stamp) map[string]any {
	return map[string]any{"stamp": st.String(), "source": st.Source, "epoch": st.Epoch, "stream": st.Stream, "seq": st.Seq}
}

// journalBackend is the -journal mode: publisher.Publish.
type journalBackend struct {
	pub *publisher.Publisher
	log *slog.Logger
}

func (b journalBackend) accept(ctx context.Context, msg publisher.Message) (int, map[string]any, error) {
	rc, err := b.pub.Publish(ctx, msg)
	switch {
	case err == nil:
		return http.StatusAccepted, stampJSON(rc.Stamp()), nil
	case errors.Is(err, journal.ErrFull), errors.Is(err, publisher.ErrBufferFull), errors.Is(err, publisher.ErrClosed):
		return http.StatusServiceUnavailable, nil, err
	case errors.Is(err, publisher.ErrAcceptUnknown):
		// The deadline hit while the journal was writing: the message may be journaled. The
		// client cannot be given a yes or a no; a retry may duplicate it (give requests an
		// idempotency key of your own if that matters).
		b.log.Warn("deadline while journaling; the message may be journaled", "err", err)
		return http.StatusGatewayTimeout, nil, fmt.Errorf("unknown: %w", err)
	case errors.Is(err, context.DeadlineExceeded):
		return http.StatusServiceUnavailable, nil, fmt.Errorf("journal full: %w", err)
	case errors.Is(err, publisher.ErrInvalidMessage):
		return http.StatusBadRequest, nil, err
	default:
		return http.StatusInternalServerError, nil, err
	}
}

// health reports the connection state and the journal's backlog.
func (b journalBackend) health(context.Context) map[string]any {
	st := b.pub.Stats()
	oldest := 0.0
	if !st.Journal.OldestPending.IsZero() {
		oldest = time.Since(st.Journal.OldestPending).Seconds()
	}
	return map[string]any{
		"state": st.State.String(), "blocked": st.Blocked, "pending": st.Journal.Pending,
		"parked": st.Journal.Parked, "oldest_pending_seconds": oldest, "confirmed": st.Confirmed,
	}
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}
