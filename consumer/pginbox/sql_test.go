package pginbox_test

import (
	"context"
	"database/sql"
	"errors"
	"testing"

	"github.com/jackc/pgx/v5"
	_ "github.com/jackc/pgx/v5/stdlib" // the "pgx" database/sql driver

	"github.com/rabbitkit/rabbitkit/consumer"
	"github.com/rabbitkit/rabbitkit/consumer/dedup"
	"github.com/rabbitkit/rabbitkit/consumer/pginbox"
	"github.com/rabbitkit/rabbitkit/consumer/storetest"
	"github.com/rabbitkit/rabbitkit/internal/pgtest"
)

func sqlDB(t testing.TB) *sql.DB {
	t.Helper()
	db, err := sql.Open("pgx", pgtest.DSN(t))
	if err != nil {
		t.Fatal(err)
	}
	db.SetMaxOpenConns(8)
	t.Cleanup(func() { _ = db.Close() })
	if _, err := db.Exec(countersDDL); err != nil {
		t.Fatal(err)
	}
	return db
}

func sqlIncr(tx *sql.Tx, key string) error {
	_, err := tx.Exec(`INSERT INTO counters (key, n) VALUES ($1, 1) ON CONFLICT (key) DO UPDATE SET n = counters.n + 1`, key)
	return err
}

func sqlCount(tx *sql.Tx, key string) (int64, error) {
	var n int64
	err := tx.QueryRow(`SELECT n FROM counters WHERE key = $1`, key).Scan(&n)
	if errors.Is(err, sql.ErrNoRows) {
		return 0, nil
	}
	return n, err
}

// SQLStore keeps the same contract over database/sql (pgx's stdlib driver).
func TestSQLConformance(t *testing.T) {
	storetest.Run(t, storetest.Harness[*sql.Tx]{
		Fresh: func(t *testing.T) func(t *testing.T) consumer.Store[*sql.Tx] {
			db := sqlDB(t)
			return func(t *testing.T) consumer.Store[*sql.Tx] {
				s, err := pginbox.OpenSQL(context.Background(), db, pginbox.Options{})
				if err != nil {
					t.Fatal(err)
				}
				return s
			}
		},
		Incr:  sqlIncr,
		Count: sqlCount,
	})
}

// The two forms share the table: what one committed the other sees as a duplicate.
func TestSQLAndPgxShareTheTable(t *testing.T) {
	dsn := pgtest.DSN(t)
	db, err := sql.Open("pgx", dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	ctx := context.Background()
	ss, err := pginbox.OpenSQL(ctx, db, pginbox.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer ss.Close()
	ps := open(t, pgtest.PoolOn(t, dsn, 2), pginbox.Options{})
	st := stampOf("a\x00", 1)
	b := &consumer.Batch[*sql.Tx]{Ops: []consumer.Op[*sql.Tx]{{Key: dedup.KeyOf(st), Stamp: st, Mark: true}}}
	if err := ss.Commit(ctx, b); err != nil || b.Ops[0].Verdict.Kind != dedup.KindNew {
		t.Fatalf("SQLStore commit: %v, %v", err, b.Ops[0].Verdict)
	}
	pb := &consumer.Batch[pgx.Tx]{Ops: []consumer.Op[pgx.Tx]{markOp(st, nil)}}
	if err := ps.Commit(ctx, pb); err != nil || pb.Ops[0].Verdict.Kind != dedup.KindDuplicate {
		t.Fatalf("Store commit of the same stamp: %v, %v; want duplicate", err, pb.Ops[0].Verdict)
	}
}
