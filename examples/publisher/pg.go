package main

// The -pg mode: publishing through the PostgreSQL transactional outbox (publisher/pgoutbox).

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/rabbitkit/rabbitkit/internal/history"
	"github.com/rabbitkit/rabbitkit/metrics"
	"github.com/rabbitkit/rabbitkit/protocol"
	"github.com/rabbitkit/rabbitkit/publisher"
	"github.com/rabbitkit/rabbitkit/publisher/pgoutbox"
	"github.com/rabbitkit/rabbitkit/topology"
)

// pgOrdersTable is the example business table: every message is inserted with one of its rows.
const pgOrdersTable = "rabbitkit_example_orders"

// runPG publishes o.count messages through the outbox on o.pg: per message one transaction that
// inserts an order row and the message, and prints the accepted line once COMMIT succeeded (or,
// with its outcome lost, once Outbox.Settle said it committed). It relays meanwhile (one
// replica holds the lease), then waits until every row it committed is confirmed, whichever
// replica sent it, and prints "confirmed <n>".
func runPG(sig context.Context, o options, log *slog.Logger, topo topology.Topology, parts *topology.Partitions, key string, promRec metrics.Recorder) error {
	pc, err := pgxpool.ParseConfig(o.pg)
	if err != nil {
		return fmt.Errorf("-pg: %w", err)
	}
	pc.MaxConns = max(pc.MaxConns, 4) // a writer, the relay's reads and lease, Pending
	startCtx, cancelStart := context.WithTimeout(sig, time.Minute)
	defer cancelStart()
	pool, err := pgxpool.NewWithConfig(startCtx, pc)
	if err != nil {
		return fmt.Errorf("-pg: %w", err)
	}
	defer pool.Close()
	ob, err := pgoutbox.Open(startCtx, pool, pgoutbox.Options{Source: o.source, Table: o.pgTable, Logger: log, LeaseTTL: o.leaseTTL})
	if err != nil {
		if sig.Err() != nil {
			return nil
		}
		return err
	}
	// Replicas start at once: CREATE TABLE IF NOT EXISTS is not safe against itself.
	err = pgx.BeginTxFunc(startCtx, pool, pgx.TxOptions{}, func(tx pgx.Tx) error {
		if _, err := tx.Exec(startCtx, `SELECT pg_advisory_xact_lock(7243061)`); err != nil {
			return err
		}
		_, err := tx.Exec(startCtx, `CREATE TABLE IF NOT EXISTS `+pgOrdersTable+` (id bigserial PRIMARY KEY, body bytea NOT NULL)`)
		return err
	})
	if err != nil {
		if sig.Err() != nil {
			return nil
		}
		return fmt.Errorf("create %s: %w", pgOrdersTable, err)
	}

	var mem metrics.Memory
	relayCtx, stopRelay := context.WithCancel(context.Background())
	var relayMu sync.Mutex
	var relayFailed error // an invalid configuration: Relay returned before relayCtx ended
	relayErr := func() error {
		relayMu.Lock()
		defer relayMu.Unlock()
		return relayFailed
	}
	var relayWG sync.WaitGroup
	relayWG.Go(func() {
		err := ob.Relay(relayCtx, publisher.Config{
			URLs:        strings.Split(o.urls, ","),
			Topology:    topo,
			Logger:      log,
			Metrics:     metrics.Multi(&mem, promRec),
			MaxInFlight: o.inFlight,
			OnParked: func(pe *publisher.ParkedError) {
				log.Error("message parked", "err", pe)
			},
		})
		if err != nil {
			relayMu.Lock()
			relayFailed = err
			relayMu.Unlock()
			stopRelay()
		}
	})
	stoppedRelay := false
	stop := func() {
		if !stoppedRelay {
			stoppedRelay = true
			stopRelay() // releases the lease: another replica takes over at once
			relayWG.Wait()
		}
	}
	defer stop()

	defer startStats(&mem, o.statsEvery)()

	// Write. Each accepted line is written and flushed right after its COMMIT (a SIGKILL can lose
	// at most the line of the one transaction committed last).
	start := time.Now()
	base := protocol.DefaultStream(o.exchange, key)
	var mine []protocol.Stamp // committed by this run
	attempt := 0
	backoff := 50 * time.Millisecond
	for len(mine) < o.count && sig.Err() == nil && relayCtx.Err() == nil {
		i := len(mine)
		if o.rate > 0 {
			due := start.Add(time.Duration(float64(i) / o.rate * float64(time.Second)))
			select {
			case <-sig.Done():
				continue
			case <-time.After(time.Until(due)):
			}
		}
		stream := base
		if o.streams > 1 {
			stream = base + "#" + strconv.Itoa(i%o.streams)
		}
		rk := key
		if parts != nil {
			rk = parts.RoutingKey(stream)
		}
		attempt++
		msg := publisher.Message{Exchange: o.exchange, RoutingKey: rk, Stream: stream, Body: makeBody(o.size, o.source, attempt)}
		st, ok, err := pgPublishOne(pool, ob, msg, log)
		if err != nil {
			var fatal *fatalError
			if errors.As(err, &fatal) {
				return fatal.err
			}
			log.Warn("transaction failed; retrying", "err", err)
			select {
			case <-sig.Done():
			case <-time.After(backoff):
			}
			backoff = min(2*backoff, 2*time.Second)
			continue
		}
		backoff = 50 * time.Millisecond
		if !ok {
			continue // it did not commit (logged): publish another
		}
		mine = append(mine, st)
		if _, err := os.Stdout.WriteString(history.FormatAccepted(st) + "\n"); err != nil {
			return err
		}
	}
	if err := relayErr(); err != nil {
		return err
	}

	// Wait until every row this run committed is gone from the outbox (confirmed), or parked.
	left := mine
	t := time.NewTicker(50 * time.Millisecond)
	defer t.Stop()
	lastLog := time.Now()
	for sig.Err() == nil {
		var parked []protocol.Stamp
		var n int
		var err error
		if o.count == 0 {
			bl, berr := ob.Backlog(sig)
			n, err = bl.Pending, berr
			if bl.Parked > 0 && err == nil {
				return fmt.Errorf("%d messages parked in the outbox", bl.Parked)
			}
		} else {
			var still []protocol.Stamp
			if still, parked, err = ob.Pending(sig, left); err == nil {
				left = still // on error, ask again about the same stamps
			}
			n = len(left)
			if err == nil && len(parked) > 0 {
				return fmt.Errorf("%d of this run's messages parked (first %s): see pgoutbox (*Outbox).Parked and Redrive", len(parked), history.FormatAccepted(parked[0]))
			}
		}
		if err == nil && n == 0 {
			break
		}
		if relayCtx.Err() != nil {
			return relayErr()
		}
		if time.Since(lastLog) > 5*time.Second {
			log.Info("waiting for confirms", "pending", n, "relaying", ob.Relaying(), "err", err)
			lastLog = time.Now()
		}
		select {
		case <-sig.Done():
		case <-t.C:
		}
	}
	stop()
	if err := relayErr(); err != nil {
		return err
	}
	if sig.Err() != nil {
		log.Info("interrupted: stopped; what is not confirmed stays in the outbox for any replica's relay",
			"committed", len(mine), "unconfirmed", len(left))
		return nil
	}
	fmt.Printf("confirmed %d\n", len(mine))
	return nil
}

// fatalError ends the run: a COMMIT whose outcome could not be settled.
type fatalError struct{ err error }

func (e *fatalError) Error() string { return e.err.Error() }

// pgPublishOne runs one transaction: an order row and msg. ok reports whether it committed; err
// is a failure before COMMIT (nothing committed; retry), or a *fatalError.
func pgPublishOne(pool *pgxpool.Pool, ob *pgoutbox.Outbox, msg publisher.Message, log *slog.Logger) (st protocol.Stamp, ok bool, err error) {
	// Not sig: a SIGTERM must not cut a COMMIT in flight.
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	tx, err := pool.Begin(ctx)
	if err != nil {
		return st, false, err
	}
	defer func() { _ = tx.Rollback(context.Background()) }() // a no-op after COMMIT
	if _, err := tx.Exec(ctx, `INSERT INTO `+pgOrdersTable+` (body) VALUES ($1)`, msg.Body); err != nil {
		return st, false, err
	}
	if st, err = ob.PublishTx(ctx, tx, msg); err != nil {
		return st, false, err
	}
	tok, err := ob.TxID(ctx, tx)
	if err != nil {
		return st, false, err
	}
	cerr := tx.Commit(ctx)
	if cerr == nil {
		return st, true, nil
	}
	// The outcome may be unknown (the connection went during COMMIT): ask the server.
	sctx, scancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer scancel()
	committed, err := ob.Settle(sctx, tok)
	if err != nil {
		return st, false, &fatalError{fmt.Errorf("COMMIT of %s failed (%v) and its outcome cannot be settled: %w", history.FormatAccepted(st), cerr, err)}
	}
	log.Warn("COMMIT failed; outcome settled by its commit mark", "tx", tok.String(), "committed", committed, "commit_err", cerr)
	return st, committed, nil
}
