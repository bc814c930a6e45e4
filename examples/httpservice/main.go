// Command httpservice is a small HTTP service that accepts requests and publishes them through
// rabbitkit. It answers 202 Accepted as soon as the message is journaled: the broker may be down,
// restarting or unreachable, and the request is still safe — it will reach the broker, in order,
// once it is back, even if this process crashes first (restart it on the same journal).
//
// Usage:
//
//	httpservice -source NAME -journal FILE [-listen 127.0.0.1:8080] [-url URL] [-exchange E]
//	            [-routing-key K] [-queue Q] [-queue-type classic|quorum]
//
// Endpoints:
//
//	POST /messages   body = message body; 202 {"stamp":"rk2:...", "source":..., "epoch":..., "stream":..., "seq":...}
//	                 503 when the journal is full (the broker has been away long enough to fill it)
//	                 504 when the 5 s deadline hit while journaling: the message may or may not be journaled
//	GET  /healthz    200 {"state":..., "blocked":..., "pending":..., "oldest_pending_seconds":...}
//
// SIGTERM or SIGINT: stop accepting requests, finish those in progress, close the publisher
// (unconfirmed messages stay journaled for the next start).
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
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
}

func main() {
	var o options
	fs := flag.NewFlagSet("httpservice", flag.ContinueOnError)
	fs.StringVar(&o.listen, "listen", "127.0.0.1:8080", "HTTP listen address (port 0: pick a free one; the address is logged)")
	fs.StringVar(&o.urls, "url", "amqp://guest:guest@127.0.0.1:5672/", "broker URL; several separated by commas. TLS: amqps://host:5671/?cacertfile=CA.pem&certfile=C.pem&keyfile=K.pem")
	fs.StringVar(&o.source, "source", "", "stable name of this service instance (rk-source); required")
	fs.StringVar(&o.journal, "journal", "", "journal file (created if missing); required")
	fs.StringVar(&o.exchange, "exchange", "rabbitkit.example", "exchange to publish to (declared durable, direct)")
	fs.StringVar(&o.routingKey, "routing-key", "", "routing key (default: the queue name)")
	fs.StringVar(&o.queue, "queue", "", "queue to declare and bind; empty: declare only the exchange")
	fs.StringVar(&o.queueType, "queue-type", topology.Classic, "type of the queue to declare: classic or quorum")
	fs.Int64Var(&o.maxBody, "max-body", 1<<20, "largest request body accepted, in bytes")
	fs.StringVar(&o.metricsAddr, "metrics-addr", "", "serve Prometheus metrics on this address (host:port) at /metrics; empty: none")
	cli.Parse(fs, "Usage:\n  httpservice -source NAME -journal FILE [flags]\n\n"+
		"POST /messages answers 202 once the body is journaled, whether the broker is up or not.\n", os.Args[1:])
	cli.Exit("httpservice", run(o), 1)
}

func run(o options) error {
	if o.source == "" || o.journal == "" {
		return errors.New("-source and -journal are required")
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

	ln, err := net.Listen("tcp", o.listen)
	if err != nil {
		return err
	}
	s := &service{pub: pub, exchange: o.exchange, key: key, maxBody: o.maxBody, log: log}
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
	pub      *publisher.Publisher
	exchange string
	key      string
	maxBody  int64
	log      *slog.Logger
}

func (s *service) routes() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("POST /messages", s.post)
	mux.HandleFunc("GET /healthz", s.health)
	return mux
}

// post journals the request body and answers 202 with the message's identity.
func (s *service) post(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, s.maxBody))
	if err != nil {
		http.Error(w, "body: "+err.Error(), http.StatusRequestEntityTooLarge)
		return
	}
	// Journaling takes milliseconds; only a full journal (a long outage) makes it wait for room.
	ctx, cancel := context.WithTimeout(r.Context(), 5*time.Second)
	defer cancel()
	rc, err := s.pub.Publish(ctx, publisher.Message{
		Exchange: s.exchange, RoutingKey: s.key, Body: body,
		ContentType: r.Header.Get("Content-Type"), CorrelationID: r.Header.Get("X-Request-Id"),
	})
	switch {
	case err == nil:
	case errors.Is(err, journal.ErrFull), errors.Is(err, publisher.ErrBufferFull), errors.Is(err, publisher.ErrClosed):
		w.Header().Set("Retry-After", "5")
		http.Error(w, err.Error(), http.StatusServiceUnavailable)
		return
	case errors.Is(err, publisher.ErrAcceptUnknown):
		// The deadline hit while the journal was writing: the message may be journaled. The
		// client cannot be given a yes or a no; a retry may duplicate it (give requests an
		// idempotency key of your own if that matters).
		s.log.Warn("deadline while journaling; the message may be journaled", "err", err)
		http.Error(w, "unknown: "+err.Error(), http.StatusGatewayTimeout)
		return
	case errors.Is(err, context.DeadlineExceeded):
		w.Header().Set("Retry-After", "5")
		http.Error(w, "journal full: "+err.Error(), http.StatusServiceUnavailable)
		return
	case errors.Is(err, publisher.ErrInvalidMessage):
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	default:
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	st := rc.Stamp()
	writeJSON(w, http.StatusAccepted, map[string]any{
		"stamp": st.String(), "source": st.Source, "epoch": st.Epoch, "stream": st.Stream, "seq": st.Seq,
	})
}

// health reports the connection state and the journal's backlog.
func (s *service) health(w http.ResponseWriter, _ *http.Request) {
	st := s.pub.Stats()
	oldest := 0.0
	if !st.Journal.OldestPending.IsZero() {
		oldest = time.Since(st.Journal.OldestPending).Seconds()
	}
	writeJSON(w, http.StatusOK, map[string]any{
		"state": st.State.String(), "blocked": st.Blocked, "pending": st.Journal.Pending,
		"parked": st.Journal.Parked, "oldest_pending_seconds": oldest, "confirmed": st.Confirmed,
	})
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}
