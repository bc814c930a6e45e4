package main

// The -pg mode: each request is an order row and its "order created" message, committed together
// through the PostgreSQL transactional outbox (publisher/pgoutbox).

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/rabbitkit/rabbitkit/metrics"
	"github.com/rabbitkit/rabbitkit/publisher"
	"github.com/rabbitkit/rabbitkit/publisher/pgoutbox"
	"github.com/rabbitkit/rabbitkit/topology"
)

// ordersTable is the example business table.
const ordersTable = "httpservice_orders"

// pgBackend is the -pg mode.
type pgBackend struct {
	pool *pgxpool.Pool
	ob   *pgoutbox.Outbox
	log  *slog.Logger
}

// openPG opens the pool and the outbox, creates the orders table, and starts the relay (every
// replica runs one; the lease holder sends). closePG stops the relay (releasing the lease, so
// another replica takes over at once) and closes the pool.
func openPG(ctx context.Context, o options, log *slog.Logger, topo topology.Topology, rec metrics.Recorder) (b *pgBackend, closePG func(), err error) {
	pc, err := pgxpool.ParseConfig(o.pg)
	if err != nil {
		return nil, nil, fmt.Errorf("-pg: %w", err)
	}
	pc.MaxConns = max(pc.MaxConns, 8) // request handlers, the relay's reads, deletes and lease
	startCtx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	pool, err := pgxpool.NewWithConfig(startCtx, pc)
	if err != nil {
		return nil, nil, fmt.Errorf("-pg: %w", err)
	}
	ob, err := pgoutbox.Open(startCtx, pool, pgoutbox.Options{Source: o.source, Logger: log, LeaseTTL: o.leaseTTL})
	if err != nil {
		pool.Close()
		return nil, nil, err
	}
	// Replicas start at once: CREATE TABLE IF NOT EXISTS is not safe against itself.
	err = pgx.BeginTxFunc(startCtx, pool, pgx.TxOptions{}, func(tx pgx.Tx) error {
		if _, err := tx.Exec(startCtx, `SELECT pg_advisory_xact_lock(7243062)`); err != nil {
			return err
		}
		_, err := tx.Exec(startCtx, `CREATE TABLE IF NOT EXISTS `+ordersTable+` (
			id      bigserial PRIMARY KEY,
			body    bytea NOT NULL,
			stamp   text NOT NULL,
			created timestamptz NOT NULL DEFAULT now())`)
		return err
	})
	if err != nil {
		pool.Close()
		return nil, nil, fmt.Errorf("create %s: %w", ordersTable, err)
	}
	relayCtx, stopRelay := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() {
		err := ob.Relay(relayCtx, publisher.Config{
			URLs: strings.Split(o.urls, ","), Topology: topo, Logger: log, Metrics: rec,
			OnParked: func(pe *publisher.ParkedError) { log.Error("message parked", "err", pe) },
		})
		if err != nil {
			log.Error("relay stopped", "err", err)
		}
	})
	closePG = func() {
		stopRelay()
		wg.Wait()
		pool.Close()
	}
	return &pgBackend{pool: pool, ob: ob, log: log}, closePG, nil
}

// accept runs one transaction: the order row and its message. 202 once COMMIT succeeded (or, its
// outcome lost, once Settle found the commit mark); 503 when nothing was written.
func (b *pgBackend) accept(ctx context.Context, msg publisher.Message) (int, map[string]any, error) {
	tx, err := b.pool.Begin(ctx)
	if err != nil {
		return http.StatusServiceUnavailable, nil, fmt.Errorf("database unavailable, nothing written: %w", err)
	}
	defer func() { _ = tx.Rollback(context.Background()) }() // a no-op after COMMIT
	msg.Type = "order.created"
	st, err := b.ob.PublishTx(ctx, tx, msg)
	switch {
	case errors.Is(err, publisher.ErrInvalidMessage):
		return http.StatusBadRequest, nil, err
	case err != nil:
		return http.StatusServiceUnavailable, nil, fmt.Errorf("outbox, nothing written: %w", err)
	}
	// The order row carries its message's stamp: a consumer's effect can be joined to it.
	var id int64
	if err := tx.QueryRow(ctx, `INSERT INTO `+ordersTable+` (body, stamp) VALUES ($1, $2) RETURNING id`, msg.Body, st.String()).Scan(&id); err != nil {
		return http.StatusServiceUnavailable, nil, fmt.Errorf("insert order, nothing written: %w", err)
	}
	tok, err := b.ob.TxID(ctx, tx)
	if err != nil {
		return http.StatusServiceUnavailable, nil, fmt.Errorf("commit mark, nothing written: %w", err)
	}
	// Not the request's context: a client that goes away must not cut a COMMIT in flight.
	cctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if cerr := tx.Commit(cctx); cerr != nil {
		// The outcome may be lost with the connection: the commit mark says which.
		sctx, scancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer scancel()
		committed, err := b.ob.Settle(sctx, tok)
		switch {
		case err != nil:
			b.log.Error("COMMIT failed and its outcome cannot be settled", "order", id, "stamp", st.String(), "commit_err", cerr, "err", err)
			return http.StatusGatewayTimeout, nil, fmt.Errorf("unknown: COMMIT failed (%v) and could not be settled: %w", cerr, err)
		case !committed:
			return http.StatusServiceUnavailable, nil, fmt.Errorf("not committed, nothing written: %w", cerr)
		}
		b.log.Warn("COMMIT failed but had committed (settled by its commit mark)", "order", id, "commit_err", cerr)
	}
	v := stampJSON(st)
	v["order_id"] = id
	return http.StatusAccepted, v, nil
}

// health reports whether this replica relays, and the outbox's backlog (every replica's).
func (b *pgBackend) health(ctx context.Context) map[string]any {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	v := map[string]any{"relaying": b.ob.Relaying(), "epoch": b.ob.Epoch()}
	bl, err := b.ob.Backlog(ctx)
	if err != nil {
		v["error"] = err.Error()
		return v
	}
	oldest := 0.0
	if !bl.OldestPending.IsZero() {
		oldest = time.Since(bl.OldestPending).Seconds()
	}
	v["pending"], v["parked"], v["oldest_pending_seconds"] = bl.Pending, bl.Parked, oldest
	return v
}

var _ backend = (*pgBackend)(nil)
