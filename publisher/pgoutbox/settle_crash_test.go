package pgoutbox_test

import (
	"context"
	"strconv"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/rabbitkit/rabbitkit/internal/pgtest"
	"github.com/rabbitkit/rabbitkit/publisher"
	"github.com/rabbitkit/rabbitkit/publisher/pgoutbox"
)

// A COMMIT lost in a crash: the transaction wrote its business row, its message and its commit
// mark, the server is stopped like a crash (immediate) before COMMIT, restarted, and new
// transactions commit, one of which may get the lost transaction's xid (seen: recovery does not
// know an xid none of whose WAL was flushed). Settle must say "not committed". Before commit marks,
// Settle asked pg_xact_status(xid) alone and, when the xid had been reused, answered "committed"
// for a transaction that does not exist (this test failed so). It runs until it has seen the xid
// reused, pg_xact_status saying "committed" (every round here so far); it checks Settle in every
// round either way.
func TestSettleAfterCrash(t *testing.T) {
	srv := pgtest.Private(t)
	dsn := srv.DSN(t)
	ctx := context.Background()
	reused := 0
	for round := 0; round < 4 && reused == 0; round++ {
		pool := pgtest.PoolOn(t, dsn, 4)
		if _, err := pool.Exec(ctx, `CREATE TABLE IF NOT EXISTS orders (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, note text NOT NULL)`); err != nil {
			t.Fatal(err)
		}
		o := open(t, pool, pgoutbox.Options{})
		tx, err := pool.Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := tx.Exec(ctx, `INSERT INTO orders (note) VALUES ('lost')`); err != nil {
			t.Fatal(err)
		}
		if _, err := o.PublishTx(ctx, tx, publisher.Message{RoutingKey: "q", Body: []byte("lost")}); err != nil {
			t.Fatal(err)
		}
		tok, err := o.TxID(ctx, tx)
		if err != nil {
			t.Fatal(err)
		}
		srv.Stop(t) // a crash before COMMIT: the transaction is lost
		_ = tx.Commit(ctx)
		pool.Close()
		srv.Start(t)

		pool = pgtest.PoolOn(t, dsn, 4)
		o = open(t, pool, pgoutbox.Options{})
		// New transactions, each committed, until the xid counter passes the lost one.
		for {
			var s string
			if err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
				if _, err := tx.Exec(ctx, `INSERT INTO orders (note) VALUES ('after')`); err != nil {
					return err
				}
				return tx.QueryRow(ctx, `SELECT pg_current_xact_id()::text`).Scan(&s)
			}); err != nil {
				t.Fatal(err)
			}
			if xid, _ := strconv.ParseUint(s, 10, 64); xid >= tok.XID {
				break
			}
		}
		var st string
		if err := pool.QueryRow(ctx, `SELECT pg_xact_status($1::text::xid8)`, strconv.FormatUint(tok.XID, 10)).Scan(&st); err != nil {
			t.Fatal(err)
		}
		sctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		committed, err := o.Settle(sctx, tok)
		cancel()
		if err != nil {
			t.Fatal(err)
		}
		if st == "committed" {
			reused++ // by a transaction since the restart (Open's own, or the loop's)
		}
		t.Logf("round %d: %s lost in the crash; pg_xact_status now says %q; Settle says committed=%v", round, tok, st, committed)
		if committed {
			t.Fatalf("Settle says a COMMIT lost in the crash committed (pg_xact_status %q)", st)
		}
		var n int
		if err := pool.QueryRow(ctx, `SELECT count(*) FROM orders WHERE note = 'lost'`).Scan(&n); err != nil || n != 0 {
			t.Fatalf("the lost transaction's row: %d (%v)", n, err)
		}
		pool.Close()
	}
	if reused == 0 {
		t.Log("no round saw the lost xid reused (its WAL reached the disk before the crash): Settle was right either way")
	}
}
