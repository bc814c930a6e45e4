package pgoutbox

import (
	"cmp"
	"context"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/rabbitkit/rabbitkit/journal"
	"github.com/rabbitkit/rabbitkit/publisher"
)

// view is the outbox as one relay's sender sees it (publisher.Outbox): the rows of one epoch,
// by relay id (rid). Relay ids are assigned here, at read time, not at INSERT: see Read.
type view struct {
	o     *Outbox
	epoch int64
	// until is the monotonic deadline (nanoseconds since base) of the lease as this relay knows
	// it, minus the stop margin: past it Read refuses (ErrLeaseLost). 0: no lease.
	until *atomic.Int64
	base  time.Time

	// The read-ahead: after a full page, the next one is read in the background while the
	// sender publishes this one (see Read). bg ends with close, which waits for the reader.
	mu     sync.Mutex
	ahead  *readAhead
	bg     context.Context
	stopBG context.CancelFunc
	wg     sync.WaitGroup
}

// readAhead is one background read: Read(after, max) as of when it ran.
type readAhead struct {
	after uint64
	max   int
	done  chan struct{} // closed when page and err are set
	page  []*journal.Entry
	err   error
}

func newView(o *Outbox, epoch int64, until *atomic.Int64, base time.Time) *view {
	v := &view{o: o, epoch: epoch, until: until, base: base}
	v.bg, v.stopBG = context.WithCancel(context.Background())
	return v
}

// close stops a read-ahead in flight and waits for it. Call it once the sender has stopped.
func (v *view) close() {
	v.mu.Lock()
	v.stopBG() // under mu: no read-ahead starts after this
	v.mu.Unlock()
	v.wg.Wait()
}

var _ publisher.Outbox = (*view)(nil)

const entryCols = `rid, stream, seq, exchange, routing_key, mandatory, props, headers, body, created, attempts, last_outcome, last_error`

// scanEntry scans entryCols after the extra destinations first.
func scanEntry(rows pgx.Rows, first ...any) (*journal.Entry, error) {
	e := &journal.Entry{}
	var rid *int64
	var stream, x, rk, props, headers []byte
	var attempts int32
	var outcome int16
	dest := append(first, &rid, &stream, &e.Seq, &x, &rk, &e.Mandatory, &props, &headers, &e.Body, &e.Created, &attempts, &outcome, &e.LastError)
	if err := rows.Scan(dest...); err != nil {
		return nil, err
	}
	if rid != nil {
		e.ID = uint64(*rid)
	}
	e.Stream, e.Exchange, e.RoutingKey = string(stream), string(x), string(rk)
	e.Attempts, e.LastOutcome = uint32(max(attempts, 0)), journal.Outcome(outcome)
	if err := decodeProps(props, &e.Properties); err != nil {
		return nil, err
	}
	h, err := journal.DecodeHeaders(headers)
	if err != nil {
		return nil, err
	}
	e.Headers = h
	return e, nil
}

func (v *view) Source() string { return v.o.opts.Source }
func (v *view) Epoch() int64   { return v.epoch }
func (v *view) LastID() uint64 { return v.o.lastRID.Load() }

func (v *view) Changed() <-chan struct{} { return v.o.changed() }

func (v *view) held() error {
	if v.until == nil {
		return nil
	}
	if u := v.until.Load(); u == 0 || int64(time.Since(v.base)) >= u {
		return ErrLeaseLost
	}
	return nil
}

// Read returns up to max pending rows of the view's epoch with rid > after, by rid, assigning
// rids first when fewer are assigned. In one transaction that locks the meta row (so that relay
// id assignments are serialized, also between two relays that overlap):
//
//  1. the assigned, pending rows with rid > after, by rid;
//  2. if fewer than max: the unassigned visible rows with the smallest ids (FOR UPDATE), numbered
//     last_rid+1, +2, … in id order; last_rid moves on.
//
// Why this never skips a row: a stream's seq is taken under its counter row's lock, held until
// the writer commits, so the next writer of the stream takes its seq, and its id, only after
// that commit. Per stream, id order is seq order is commit order, and the rows of a stream
// visible in any snapshot are a prefix of its seqs. Each assignment extends every stream's
// assigned prefix in seq order, and a row that becomes visible later is numbered later, so with
// a rid larger than every rid already assigned: a reader by rid > after never passes over it.
//
// Read-ahead: a page is one transaction of several round trips and a COMMIT (with its WAL
// flush), which the sender would otherwise wait for between pages. So after a full page Read
// starts reading the next one, Read(last rid of this page, max), in the background, and the
// sender's next Read with those arguments takes its result (and, when it is full too, starts the
// next read-ahead; a short page means the backlog is read). That result is as of a moment
// before the call: it is used only when it has rows (an empty one is read again, so that a
// commit signalled since, Changed, is not missed) and while the lease is held. Any other call
// (a pass that restarts after a reconnect) discards it; the relay ids it assigned stay assigned,
// and the rows are read again by rid. A drain of a 1,000,000-row backlog: docs/BENCHMARKS.md.
func (v *view) Read(ctx context.Context, after uint64, max int) ([]*journal.Entry, error) {
	if err := v.held(); err != nil {
		return nil, err
	}
	v.mu.Lock()
	a := v.ahead
	v.ahead = nil
	v.mu.Unlock()
	if a != nil {
		select {
		case <-a.done:
		case <-ctx.Done():
			return nil, fmt.Errorf("pgoutbox: read: %w", ctx.Err())
		}
		if a.err == nil && a.after == after && a.max == max && len(a.page) > 0 {
			if len(a.page) >= max {
				v.readAhead(a.page[len(a.page)-1].ID, max)
			}
			return a.page, nil
		}
	}
	page, err := v.read(ctx, after, max)
	if err == nil && len(page) >= max {
		v.readAhead(page[len(page)-1].ID, max)
	}
	return page, err
}

// readAhead starts reading the page after after in the background, unless the view is closed.
func (v *view) readAhead(after uint64, max int) {
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.bg.Err() != nil {
		return
	}
	a := &readAhead{after: after, max: max, done: make(chan struct{})}
	v.ahead = a
	v.wg.Go(func() {
		defer close(a.done)
		if a.err = v.held(); a.err == nil {
			a.page, a.err = v.read(v.bg, after, max)
		}
	})
}

// read is one page, read now (Read without the read-ahead).
func (v *view) read(ctx context.Context, after uint64, max int) ([]*journal.Entry, error) {
	var out []*journal.Entry
	var last int64
	err := pgx.BeginTxFunc(ctx, v.o.pool, pgx.TxOptions{IsoLevel: pgx.ReadCommitted}, func(tx pgx.Tx) error {
		out = out[:0]
		// The lock and, in the same statement, the orphan guard (idleGuard).
		var guard string
		if err := tx.QueryRow(ctx, `SELECT last_rid, `+idleGuardSQL+` FROM `+v.o.n.metaT+` WHERE k = 1 FOR UPDATE`, v.o.idleGuard()).Scan(&last, &guard); err != nil {
			return err
		}
		rows, err := tx.Query(ctx, `SELECT `+entryCols+` FROM `+v.o.n.t+` WHERE rid > $1 AND NOT parked AND epoch = $2 ORDER BY rid LIMIT $3`,
			int64(after), v.epoch, max)
		if err != nil {
			return err
		}
		for rows.Next() {
			e, err := scanEntry(rows)
			if err != nil {
				rows.Close()
				return err
			}
			out = append(out, e)
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return err
		}
		if len(out) >= max {
			return nil
		}
		rows, err = tx.Query(ctx, `WITH picked AS (
				SELECT id, row_number() OVER (ORDER BY id) AS n FROM (
					SELECT id FROM `+v.o.n.t+` WHERE rid IS NULL AND NOT parked AND epoch = $1 ORDER BY id LIMIT $2 FOR UPDATE) s)
			UPDATE `+v.o.n.t+` AS t SET rid = $3 + picked.n FROM picked WHERE t.id = picked.id
			RETURNING `+prefixed("t.", entryCols), v.epoch, max-len(out), last)
		if err != nil {
			return err
		}
		var fresh []*journal.Entry
		for rows.Next() {
			e, err := scanEntry(rows)
			if err != nil {
				rows.Close()
				return err
			}
			fresh = append(fresh, e)
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return err
		}
		if len(fresh) == 0 {
			return nil
		}
		slices.SortFunc(fresh, func(a, b *journal.Entry) int { return cmp.Compare(a.ID, b.ID) }) // RETURNING has no order
		last += int64(len(fresh))
		if _, err := tx.Exec(ctx, `UPDATE `+v.o.n.metaT+` SET last_rid = $1 WHERE k = 1`, last); err != nil {
			return err
		}
		out = append(out, fresh...)
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("pgoutbox: read: %w", err)
	}
	for {
		cur := v.o.lastRID.Load()
		if uint64(last) <= cur || v.o.lastRID.CompareAndSwap(cur, uint64(last)) {
			break
		}
	}
	return out, nil
}

func prefixed(p, cols string) string {
	out := ""
	for i, c := range splitCols(cols) {
		if i > 0 {
			out += ", "
		}
		out += p + c
	}
	return out
}

func splitCols(cols string) []string {
	var out []string
	cur := ""
	for _, r := range cols {
		switch r {
		case ',':
			out = append(out, cur)
			cur = ""
		case ' ':
		default:
			cur += string(r)
		}
	}
	return append(out, cur)
}

func rids(ids []uint64) []int64 {
	a := make([]int64, len(ids))
	for i, id := range ids {
		a[i] = int64(id)
	}
	return a
}

// Delete removes confirmed rows (by rid) in one statement, one attempt. It is idempotent (a
// row's rid is never given to another row); a failure is retried by the publisher's deleter, with
// backoff, which keeps the rids out of this relay's resends meanwhile (docs/DESIGN.md, deleter).
// MetricDeletesPending reports the rows of a failed attempt until one succeeds.
func (v *view) Delete(ctx context.Context, ids ...uint64) error {
	if len(ids) == 0 {
		return nil
	}
	if _, err := v.o.pool.Exec(ctx, `DELETE FROM `+v.o.n.t+` WHERE rid = ANY($1) AND NOT parked`, rids(ids)); err != nil {
		v.o.m.Set(MetricDeletesPending, float64(len(ids))) // a retry carries every id not deleted yet
		return fmt.Errorf("pgoutbox: delete: %w", err)
	}
	v.o.m.Set(MetricDeletesPending, 0)
	return nil
}

// RecordAttempt counts a failed attempt on rows (by rid).
func (v *view) RecordAttempt(ctx context.Context, ids []uint64, o journal.Outcome, reason string) error {
	if _, err := v.o.pool.Exec(ctx, `UPDATE `+v.o.n.t+` SET attempts = attempts + 1, last_outcome = $2, last_error = $3
		WHERE rid = ANY($1) AND NOT parked`, rids(ids), int16(o), reason); err != nil {
		return fmt.Errorf("pgoutbox: record attempt: %w", err)
	}
	return nil
}

// Park parks a pending row (by rid) with the reason.
func (v *view) Park(ctx context.Context, id uint64, reason string) error {
	if _, err := v.o.pool.Exec(ctx, `UPDATE `+v.o.n.t+` SET parked = true, park_reason = $2, parked_at = now()
		WHERE rid = $1 AND NOT parked`, int64(id), reason); err != nil {
		return fmt.Errorf("pgoutbox: park: %w", err)
	}
	return nil
}

// Backlog returns the gauges the relay refreshes in the background (at most once a second).
func (v *view) Backlog() journal.Backlog {
	if b := v.o.backlog.Load(); b != nil {
		return *b
	}
	return journal.Backlog{}
}
