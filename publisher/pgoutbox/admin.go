package pgoutbox

// Settling an unknown COMMIT, parked rows and the backlog: the calls an operator or a careful
// caller makes beside publishing.

import (
	"context"
	"crypto/rand"
	"fmt"
	"strconv"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/rabbitkit/rabbitkit/journal"
)

// MarkRetention is how long a commit mark written by TxID is kept: Settle must be called within
// it. Older marks are deleted a few at a time by later TxID calls.
const MarkRetention = 24 * time.Hour

// TxToken names a transaction for Settle: its id and a random mark TxID wrote in it.
type TxToken struct {
	XID  uint64    // pg_current_xact_id()
	Mark [16]byte  // the mark's key in the outbox's _marks table
	At   time.Time // when TxID was called (this process's clock)
}

// String formats the token for logs.
func (t TxToken) String() string { return fmt.Sprintf("xid %d mark %x", t.XID, t.Mark[:6]) }

// TxID writes a commit mark in tx and returns the token that names it. Call it before COMMIT;
// if COMMIT then fails with a lost connection, its outcome is unknown: Settle tells it. The mark
// is one small row in the outbox's _marks table (kept MarkRetention); now and then TxID also
// deletes a few expired marks, skipping any another transaction holds.
func (o *Outbox) TxID(ctx context.Context, tx pgx.Tx) (TxToken, error) {
	tok := TxToken{At: time.Now()}
	if _, err := rand.Read(tok.Mark[:]); err != nil {
		return tok, fmt.Errorf("pgoutbox: txid: %w", err)
	}
	var s string
	if err := tx.QueryRow(ctx, `WITH m AS (INSERT INTO `+o.n.marksT+` (mark) VALUES ($1)) SELECT pg_current_xact_id()::text`, tok.Mark[:]).Scan(&s); err != nil {
		return tok, fmt.Errorf("pgoutbox: txid: %w", err)
	}
	xid, err := strconv.ParseUint(s, 10, 64)
	if err != nil {
		return tok, fmt.Errorf("pgoutbox: txid %q: %w", s, err)
	}
	tok.XID = xid
	if tok.Mark[0] == 0 { // 1 in 256
		if _, err := tx.Exec(ctx, `DELETE FROM `+o.n.marksT+` WHERE mark IN (SELECT mark FROM `+o.n.marksT+
			` WHERE at < now() - $1::interval ORDER BY at LIMIT 1024 FOR UPDATE SKIP LOCKED)`, MarkRetention.String()); err != nil {
			return tok, fmt.Errorf("pgoutbox: txid: expiring old marks: %w", err)
		}
	}
	return tok, nil
}

// Settle tells whether the transaction tok names (from TxID) committed, by the mark it wrote:
// committed exactly when the mark is there. It first waits, asking pg_xact_status, while the
// server still has the transaction in progress (its backend has not noticed the lost connection
// yet), until ctx ends. The transaction id alone is not enough: after a crash PostgreSQL can give
// a lost transaction's id to a new transaction, whose commit pg_xact_status then reports (seen
// after pg_ctl stop -m immediate). A token older than MarkRetention whose mark is gone gives
// ErrTooOld.
func (o *Outbox) Settle(ctx context.Context, tok TxToken) (committed bool, err error) {
	wait := 20 * time.Millisecond
	committedSeen := 0
	for {
		var st *string
		var marked bool
		err := o.pool.QueryRow(ctx, `SELECT pg_xact_status($1::text::xid8), EXISTS (SELECT 1 FROM `+o.n.marksT+` WHERE mark = $2)`,
			strconv.FormatUint(tok.XID, 10), tok.Mark[:]).Scan(&st, &marked)
		switch {
		case err != nil:
			if ctx.Err() != nil {
				return false, fmt.Errorf("pgoutbox: settle %s: %w", tok, ctx.Err())
			}
			// The database may be unreachable for a moment: keep asking.
		case marked:
			return true, nil
		case st != nil && *st == "in progress":
			// Still running, or its id was given to a transaction that is: wait for it to end.
		case st != nil && *st == "committed" && committedSeen < 3:
			// The commit log says committed a moment before the mark is visible to new
			// snapshots; a reused id never gets the mark.
			committedSeen++
		case time.Since(tok.At) > MarkRetention:
			return false, fmt.Errorf("%w: %s, from %s", ErrTooOld, tok, tok.At.Format(time.RFC3339))
		default:
			return false, nil
		}
		select {
		case <-time.After(wait):
		case <-ctx.Done():
			return false, fmt.Errorf("pgoutbox: settle %s: %w", tok, ctx.Err())
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
