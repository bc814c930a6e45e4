package pgoutbox

// Read-only views of an outbox for operator tools (cmd/rabbitkit): the source recorded in the
// table, the pending rows without assigning them to a relay, the counters.

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// SourceOf returns the source and epoch recorded in the outbox table's meta row (table "" is
// DefaultTable), reading only: it neither creates nor migrates anything, so a tool can Open the
// outbox as its own source without guessing it. A missing table is an error.
func SourceOf(ctx context.Context, pool *pgxpool.Pool, table string) (source string, epoch int64, err error) {
	if table == "" {
		table = DefaultTable
	}
	n, err := newNames(table)
	if err != nil {
		return "", 0, err
	}
	var src []byte
	err = pool.QueryRow(ctx, `SELECT source, epoch FROM `+n.metaT+` WHERE k = 1`).Scan(&src, &epoch)
	if errors.Is(err, pgx.ErrNoRows) {
		return "", 0, fmt.Errorf("pgoutbox: %s: no meta row: not an outbox, or never opened", table)
	}
	if err != nil {
		return "", 0, fmt.Errorf("pgoutbox: source of %s: %w", table, err)
	}
	return string(src), epoch, nil
}

// PendingEntry is a pending row: Entry.ID is the row's id (not the relay's rid), Entry.Seq its
// seq in Epoch.
type PendingEntry struct {
	ParkedEntry // Reason and ParkedAt are empty
}

// ListPending returns up to limit pending rows (all when limit <= 0) with id > after, oldest
// first. Unlike a relay's read it assigns nothing: it only reads.
func (o *Outbox) ListPending(ctx context.Context, after uint64, limit int) ([]PendingEntry, error) {
	q := `SELECT id, epoch, ` + entryCols + ` FROM ` + o.n.t + ` WHERE NOT parked AND id > $1 ORDER BY id`
	args := []any{int64(after)}
	if limit > 0 {
		q += ` LIMIT $2`
		args = append(args, limit)
	}
	rows, err := o.pool.Query(ctx, q, args...)
	if err != nil {
		return nil, fmt.Errorf("pgoutbox: pending: %w", err)
	}
	defer rows.Close()
	var out []PendingEntry
	for rows.Next() {
		var p PendingEntry
		var id int64
		e, err := scanEntry(rows, &id, &p.Epoch)
		if err != nil {
			return nil, fmt.Errorf("pgoutbox: pending: %w", err)
		}
		e.ID = uint64(id)
		p.Entry = *e
		out = append(out, p)
	}
	return out, rows.Err()
}

// NextSeqs returns, for the outbox's current epoch, the next seq of every stream that has one.
func (o *Outbox) NextSeqs(ctx context.Context) (map[string]int64, error) {
	rows, err := o.pool.Query(ctx, `SELECT c.stream, c.next + 1 FROM `+o.n.countersT+` c, `+o.n.metaT+` m WHERE m.k = 1 AND c.epoch = m.epoch`)
	if err != nil {
		return nil, fmt.Errorf("pgoutbox: counters: %w", err)
	}
	defer rows.Close()
	out := map[string]int64{}
	for rows.Next() {
		var s []byte
		var n int64
		if err := rows.Scan(&s, &n); err != nil {
			return nil, fmt.Errorf("pgoutbox: counters: %w", err)
		}
		out[string(s)] = n
	}
	return out, rows.Err()
}
