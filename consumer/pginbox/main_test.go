package pginbox_test

import (
	"context"
	"errors"
	"flag"
	"log/slog"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"go.uber.org/goleak"

	"github.com/rabbitkit/rabbitkit/consumer/pginbox"
	"github.com/rabbitkit/rabbitkit/internal/pgtest"
	"github.com/rabbitkit/rabbitkit/internal/testbroker"
)

var soak = flag.Bool("rk.soak", false, "run the million-message table size soak")

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m, append(testbroker.IgnoreProxyLeaks(),
		// pgxpool's background health check ends with Close, but the pool's connections may still
		// be closing when a test returns.
		goleak.IgnoreAnyFunction("github.com/jackc/pgx/v5/pgxpool.(*Pool).backgroundHealthCheck"),
	)...)
}

// counters is the effect table of the tests: Incr adds one to a named counter.
const countersDDL = `CREATE TABLE IF NOT EXISTS counters (key text PRIMARY KEY, n bigint NOT NULL)`

func incr(tx pgx.Tx, key string) error {
	_, err := tx.Exec(context.Background(), `INSERT INTO counters (key, n) VALUES ($1, 1) ON CONFLICT (key) DO UPDATE SET n = counters.n + 1`, key)
	return err
}

func count(tx pgx.Tx, key string) (int64, error) {
	var n int64
	err := tx.QueryRow(context.Background(), `SELECT n FROM counters WHERE key = $1`, key).Scan(&n)
	if errors.Is(err, pgx.ErrNoRows) {
		return 0, nil
	}
	return n, err
}

// freshPool is a pool of at most n connections on a new database holding the counters table.
func freshPool(t testing.TB, n int32) (*pgxpool.Pool, string) {
	t.Helper()
	dsn := pgtest.DSN(t)
	pool := pgtest.PoolOn(t, dsn, n)
	if _, err := pool.Exec(context.Background(), countersDDL); err != nil {
		t.Fatal(err)
	}
	return pool, dsn
}

func open(t testing.TB, pool *pgxpool.Pool, opts pginbox.Options) *pginbox.Store {
	t.Helper()
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	s, err := pginbox.Open(context.Background(), pool, opts)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}
