package pgoutbox

// Settling an unknown COMMIT, parked rows and the backlog: the calls an operator or a careful
// caller makes beside publishing.

import (
	"context"
	"fmt"
	"strconv"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/rabbitkit/rabbitkit/journal"
)

// TxID returns the id of tx's transaction (pg_current_xact_id(); it assigns one if tx has none
// yet). Call it before COMMIT; if COMMIT then fails with a lost connection, its outcome is
// unknown: Settle tells it.
func TxID(ctx context.Context, tx pgx.Tx) (uint64, error) {
	var s string
	if err := tx.QueryRow(ctx, `SELECT pg_current_xact_id()::text`).Scan(&s); err != nil {
		return 0, fmt.Errorf("pgoutbox: txid: %w", err)
	}
	return strconv.ParseUint(s, 10, 64)
}

// Settle tells whether the transaction xid (from TxID) committed, with pg_xact_status on a new
// connection of pool. While the server still has it in progress (its backend has not yet
// noticed the lost connection) it waits and asks again, until ctx ends. A transaction too old
// for the server's commit log gives ErrTooOld.
func Settle(ctx context.Context, pool *pgxpool.Pool, xid uint64) (committed bool, err error) {
	wait := 20 * time.Millisecond
	for {
		var st *string
		err := pool.QueryRow(ctx, `SELECT pg_xact_status($1::text::xid8)`, strconv.FormatUint(xid, 10)).Scan(&st)
		switch {
		case err != nil:
			if ctx.Err() != nil {
				return false, fmt.Errorf("pgoutbox: settle %d: %w", xid, ctx.Err())
			}
			// The database may be unreachable for a moment: keep asking.
		case st == nil:
			return false, fmt.Errorf("%w: xid %d", ErrTooOld, xid)
		case *st == "committed":
			return true, nil
		case *st == "aborted":
			return false, nil
		}
		select {
		case <-time.After(wait):
		case <-ctx.Done():
			return false, fmt.Errorf("pgoutbox: settle %d: %w", xid, ctx.Err())
		}
		wait = min(2*wait, time.Second)
	}
}

// ParkedEntry is a parked row: Entry.ID is the row's id (for Redrive), Entry.Seq its seq in
// Epoch.
type ParkedEntry struct {
	journal.ParkedEntry
	Epoch int64
}

// Parked lists the parked rows, oldest first.
func (o *Outbox) Parked(ctx context.Context) ([]ParkedEntry, error) {
	rows, err := o.pool.Query(ctx, `SELECT id, epoch, park_reason, parked_at, `+entryCols+` FROM `+o.n.t+` WHERE parked ORDER BY id`)
	if err != nil {
		return nil, fmt.Errorf("pgoutbox: parked: %w", err)
	}
	defer rows.Close()
	var out []ParkedEntry
	for rows.Next() {
		var p ParkedEntry
		var id int64
		var reason *string
		var at *time.Time
		e, err := scanEntry(rows, &id, &p.Epoch, &reason, &at)
		if err != nil {
			return nil, fmt.Errorf("pgoutbox: parked: %w", err)
		}
		e.ID = uint64(id)
		p.Entry = *e
		if reason != nil {
			p.Reason = *reason
		}
		if at != nil {
			p.ParkedAt = *at
		}
		out = append(out, p)
	}
	return out, rows.Err()
}

// Redrive makes parked rows (by ParkedEntry ID) pending again: the relay sends them next, with
// their original stream, seq and epoch. It returns how many were parked.
func (o *Outbox) Redrive(ctx context.Context, ids ...uint64) (int, error) {
	a := make([]int64, len(ids))
	for i, id := range ids {
		a[i] = int64(id)
	}
	tag, err := o.pool.Exec(ctx, `UPDATE `+o.n.t+` SET parked = false, rid = NULL, park_reason = NULL, parked_at = NULL,
		attempts = 0 WHERE id = ANY($1) AND parked`, a)
	if err != nil {
		return 0, fmt.Errorf("pgoutbox: redrive: %w", err)
	}
	o.wake()
	if o.opts.Notify {
		_, _ = o.pool.Exec(ctx, `SELECT pg_notify($1, '')`, o.n.channel)
	}
	return int(tag.RowsAffected()), nil
}

// Backlog counts the pending and parked rows and finds the oldest pending one (one aggregate
// over the table: for gauges, poll it at most every few seconds).
func (o *Outbox) Backlog(ctx context.Context) (journal.Backlog, error) {
	var b journal.Backlog
	var oldest *time.Time
	var pn, pkn int64
	err := o.pool.QueryRow(ctx, `SELECT count(*) FILTER (WHERE NOT parked), coalesce(sum(length(body)) FILTER (WHERE NOT parked), 0),
		count(*) FILTER (WHERE parked), coalesce(sum(length(body)) FILTER (WHERE parked), 0),
		min(created) FILTER (WHERE NOT parked) FROM `+o.n.t).Scan(&pn, &b.PendingBytes, &pkn, &b.ParkedBytes, &oldest)
	if err != nil {
		return b, fmt.Errorf("pgoutbox: backlog: %w", err)
	}
	b.Pending, b.Parked = int(pn), int(pkn)
	if oldest != nil {
		b.OldestPending = *oldest
	}
	return b, nil
}
