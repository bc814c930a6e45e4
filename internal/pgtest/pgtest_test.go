package pgtest

import (
	"context"
	"net/url"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"
)

func dbExists(t *testing.T, admin, name string) bool {
	t.Helper()
	conn, err := pgx.Connect(context.Background(), admin)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	var n int
	if err := conn.QueryRow(context.Background(), `SELECT count(*) FROM pg_database WHERE datname = $1`, name).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n == 1
}

// DSN gives a fresh database that is dropped at the end, even with a connection still open.
func TestDSN(t *testing.T) {
	var name string
	t.Run("inner", func(t *testing.T) {
		dsn := DSN(t)
		u, err := url.Parse(dsn)
		if err != nil {
			t.Fatal(err)
		}
		name = strings.TrimPrefix(u.Path, "/")
		if !strings.HasPrefix(name, "rk_") || !dbExists(t, ServerURL(), name) {
			t.Fatalf("DSN %s: no database rk_…", dsn)
		}
		pool := PoolOn(t, dsn, 1)
		if err := pool.Ping(context.Background()); err != nil {
			t.Fatal(err)
		}
		conn, err := pgx.Connect(context.Background(), dsn) // left open: DROP … WITH (FORCE) cuts it
		if err != nil {
			t.Fatal(err)
		}
		_ = conn
	})
	if dbExists(t, ServerURL(), name) {
		t.Fatalf("database %s still exists after its test", name)
	}
}

// A private server starts, crashes (immediate stop) and starts again with its data.
func TestPrivate(t *testing.T) {
	if testing.Short() {
		t.Skip("-short")
	}
	s := Private(t)
	dsn := s.DSN(t)
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Exec(ctx, `CREATE TABLE t (x int); INSERT INTO t VALUES (7)`); err != nil {
		t.Fatal(err)
	}
	s.Stop(t)
	if err := conn.Ping(ctx); err == nil {
		t.Fatal("a connection survived the crash")
	}
	s.Start(t)
	conn, err = pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	var x int
	if err := conn.QueryRow(ctx, `SELECT x FROM t`).Scan(&x); err != nil || x != 7 {
		t.Fatalf("after the restart: %d, %v", x, err)
	}
}
