package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync/atomic"
	"time"

	"github.com/cenkalti/backoff/v4"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/rabbitkit/rabbitkit/consumer"
	"github.com/rabbitkit/rabbitkit/consumer/dedup"
	"github.com/rabbitkit/rabbitkit/consumer/pginbox"
	"github.com/rabbitkit/rabbitkit/internal/history"
	"github.com/rabbitkit/rabbitkit/internal/ledger"
	"github.com/rabbitkit/rabbitkit/protocol"
	"github.com/rabbitkit/rabbitkit/topology"
)

// pgBackend opens the PostgreSQL inbox and ledger of -pg and returns the function that runs the
// consumer on them, and the cleanup that closes what it opened.
func pgBackend(ctx context.Context, o options, cfg consumer.Config, log *slog.Logger, last *atomic.Int64) (cleanup func(), runTx func(context.Context) error, err error) {
	led, err := ledger.NewPG(o.ledger)
	if err != nil {
		return nil, nil, err
	}
	pool, err := openPool(ctx, o.pg, max(4, o.workers+2))
	if err != nil {
		return nil, nil, err
	}
	var store *pginbox.Store
	err = startUp(ctx, log, func() error {
		if err := led.Create(ctx, pool); err != nil {
			return err
		}
		store, err = pginbox.Open(ctx, pool, pginbox.Options{Table: o.pgTable, Dedup: cfg.Dedup, Logger: log})
		return err
	})
	if err != nil {
		pool.Close()
		return nil, nil, err
	}
	cfg.StorePath, cfg.Dedup = "", dedup.Config{} // the store's dedup config is the one
	h := func(ctx context.Context, tx pgx.Tx, m *consumer.Message) error {
		last.Store(time.Now().UnixNano())
		if !m.Stamped {
			return nil // not published through rabbitkit: nothing to count
		}
		return led.Insert(ctx, tx, m.Stamp)
	}
	fail := func(err error) (func(), func(context.Context) error, error) {
		_ = store.Close()
		pool.Close()
		return nil, nil, err
	}
	if o.partitions > 0 {
		if o.exchange == "" {
			return fail(errors.New("-partitions needs -exchange"))
		}
		cfg.Queue, cfg.Topology = "", topology.Topology{}
		g, err := consumer.NewGroup(consumer.GroupConfig{
			Config:     cfg,
			Partitions: topology.Partitions{Exchange: o.exchange, Queue: o.queue, Count: o.partitions, Type: o.queueType},
			Leaser:     store,
			Member:     o.member,
			OnAssign:   func(held []int) { log.Info("partitions held", "partitions", held) },
		}, store)
		if err != nil {
			return fail(err)
		}
		return func() { _ = store.Close(); pool.Close() }, func(ctx context.Context) error { return g.RunTx(ctx, h) }, nil
	}
	c, err := consumer.NewWithStore(cfg, store)
	if err != nil {
		return fail(err)
	}
	cleanup = func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = c.Close(ctx)
		_ = store.Close()
		pool.Close()
	}
	return cleanup, func(ctx context.Context) error { return c.RunTx(ctx, h) }, nil
}

func openPool(ctx context.Context, dsn string, conns int) (*pgxpool.Pool, error) {
	pc, err := pgxpool.ParseConfig(dsn)
	if err != nil {
		return nil, fmt.Errorf("-pg: %w", err)
	}
	pc.MaxConns = int32(conns)
	pool, err := pgxpool.NewWithConfig(ctx, pc)
	if err != nil {
		return nil, fmt.Errorf("-pg: %w", err)
	}
	return pool, nil
}

// dumpPG prints the PostgreSQL ledger: one line per stamp with its number of rows.
func dumpPG(ctx context.Context, w io.Writer, o options) error {
	led, err := ledger.NewPG(o.ledger)
	if err != nil {
		return err
	}
	pool, err := openPool(ctx, o.pg, 1)
	if err != nil {
		return err
	}
	defer pool.Close()
	if err := led.Create(ctx, pool); err != nil { // an empty ledger prints nothing, not an error
		return err
	}
	bw := bufio.NewWriter(w)
	err = led.Dump(ctx, pool, func(s protocol.Stamp, n int64) error {
		_, err := bw.WriteString(history.FormatApplied(history.Applied{Stamp: s, Count: n}) + "\n")
		return err
	})
	if err != nil {
		return err
	}
	return bw.Flush()
}

// startUp runs fn until it succeeds, retrying with backoff while PostgreSQL cannot be reached (a
// replica restarted during a database outage waits for it instead of exiting).
func startUp(ctx context.Context, log *slog.Logger, fn func() error) error {
	bo := backoff.NewExponentialBackOff()
	bo.InitialInterval, bo.MaxInterval, bo.MaxElapsedTime = 100*time.Millisecond, 2*time.Second, 0
	for {
		err := fn()
		if err == nil || !unreachable(err) || ctx.Err() != nil {
			return err
		}
		d := bo.NextBackOff()
		log.Warn("PostgreSQL unreachable at start-up; retrying", "err", err, "retry_in", d)
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(d):
		}
	}
}

// unreachable reports an error that says PostgreSQL could not be reached or the connection broke.
func unreachable(err error) bool {
	var ce *pgconn.ConnectError
	var ne net.Error
	return errors.Is(err, consumer.ErrStoreUnavailable) || errors.As(err, &ce) || errors.As(err, &ne) ||
		errors.Is(err, io.ErrUnexpectedEOF) || pgconn.SafeToRetry(err)
}
