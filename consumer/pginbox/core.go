package pginbox

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"time"

	"github.com/rabbitkit/rabbitkit/consumer"
	"github.com/rabbitkit/rabbitkit/consumer/dedup"
)

// db is what the core needs from a driver: transactions and the two lock-free reads. Store (pgx)
// and SQLStore (database/sql) implement it; everything else is shared.
type db[T any] interface {
	begin(ctx context.Context, readOnly bool) (txn[T], error)
	// reads runs one statement outside any explicit transaction.
	read(ctx context.Context, sql string, args []any, scan func(scanner) error) error
	// byteas and int8s turn Go slices into the driver's bytea[] and int8[] parameters.
	byteas(v [][]byte) any
	int8s(v []int64, valid []bool) any
}

// txn is one open transaction.
type txn[T any] interface {
	tx() T
	exec(ctx context.Context, sql string, args ...any) error
	// query runs sql and calls scan for every row.
	query(ctx context.Context, sql string, args []any, scan func(scanner) error) error
	// execQuery runs exec then query, pipelined in one round trip where the driver can.
	execQuery(ctx context.Context, execSQL string, execArgs []any, querySQL string, queryArgs []any, scan func(scanner) error) error
	commit(ctx context.Context) error
	// rollback rolls back, best effort, within a short timeout of its own.
	rollback()
	// broken reports whether the connection was found closed.
	broken() bool
}

// scanner is pgx.Rows and *sql.Rows.
type scanner interface{ Scan(dest ...any) error }

// row is one inbox row as read in a transaction.
type row struct {
	key    dedup.Key
	state  []byte // nil: no state yet (a row just inserted)
	expire int64  // unix microseconds; 0: NULL
}

func scanRow(s scanner) (row, error) {
	var src, stream, state []byte
	var exp *time.Time
	if err := s.Scan(&src, &stream, &state, &exp); err != nil {
		return row{}, err
	}
	r := row{key: dedup.Key{Source: string(src), Stream: string(stream)}, state: state}
	if exp != nil {
		r.expire = exp.UnixMicro()
		if r.expire == 0 {
			r.expire = 1 // 0 means NULL here; 1970-01-01 is in the past either way
		}
	}
	return r, nil
}

// core is the store's logic over either driver.
type core[T any] struct {
	d    db[T]
	q    *queries
	opts Options
	cfg  dedup.Config
	log  *slog.Logger

	mu     sync.Mutex
	closed bool
	wg     sync.WaitGroup
}

func newCore[T any](ctx context.Context, d db[T], opts Options) (*core[T], error) {
	opts, cfg, err := opts.withDefaults()
	if err != nil {
		return nil, err
	}
	q, err := newQueries(opts.Table)
	if err != nil {
		return nil, err
	}
	c := &core[T]{d: d, q: q, opts: opts, cfg: cfg, log: opts.Logger}
	mctx, cancel := context.WithTimeout(ctx, max(opts.TxTimeout, time.Minute))
	defer cancel()
	if err := migrate(mctx, d, q, func(msg string, args ...any) { c.log.Info(msg, args...) }); err != nil {
		if errors.Is(err, ErrSchemaVersion) {
			return nil, err
		}
		return nil, classify("open "+q.table, err, phaseTx, false)
	}
	return c, nil
}

// enter counts a call in; Close waits for the calls counted in.
func (c *core[T]) enter() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return consumer.ErrClosed
	}
	c.wg.Add(1)
	return nil
}

func (c *core[T]) close() error {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil
	}
	c.closed = true
	c.mu.Unlock()
	c.wg.Wait()
	return nil
}

func (c *core[T]) claim(ctx context.Context) (func(), error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if err := c.enter(); err != nil {
		return nil, err
	}
	c.wg.Done()
	return func() {}, nil
}

func (c *core[T]) dedupConfig() dedup.Config { return c.cfg }

func keyArgs[T any](d db[T], keys []dedup.Key) []any {
	src := make([][]byte, len(keys))
	str := make([][]byte, len(keys))
	for i, k := range keys {
		src[i], str[i] = []byte(k.Source), []byte(k.Stream)
	}
	return []any{d.byteas(src), d.byteas(str)}
}

func (c *core[T]) peek(ctx context.Context, keys []dedup.Key) ([]consumer.StreamState, error) {
	if err := c.enter(); err != nil {
		return nil, err
	}
	defer c.wg.Done()
	if len(keys) == 0 {
		return nil, nil
	}
	ctx, cancel := context.WithTimeout(ctx, c.opts.TxTimeout)
	defer cancel()
	return c.readStates(ctx, "peek", c.q.peek, keyArgs(c.d, keys))
}

func (c *core[T]) load(ctx context.Context) ([]consumer.StreamState, error) {
	if err := c.enter(); err != nil {
		return nil, err
	}
	defer c.wg.Done()
	ctx, cancel := context.WithTimeout(ctx, c.opts.TxTimeout)
	defer cancel()
	return c.readStates(ctx, "load", c.q.load, nil)
}

func (c *core[T]) readStates(ctx context.Context, what, sql string, args []any) ([]consumer.StreamState, error) {
	var out []consumer.StreamState
	err := c.d.read(ctx, sql, args, func(s scanner) error {
		var src, stream, state []byte
		if err := s.Scan(&src, &stream, &state); err != nil {
			return err
		}
		out = append(out, consumer.StreamState{Key: dedup.Key{Source: string(src), Stream: string(stream)}, State: state})
		return nil
	})
	if err != nil {
		return nil, classify(what, err, phaseTx, false)
	}
	return out, nil
}

func (c *core[T]) view(ctx context.Context, fn func(tx T) error) (err error) {
	if err := c.enter(); err != nil {
		return err
	}
	defer c.wg.Done()
	tx, err := c.d.begin(ctx, true)
	if err != nil {
		return classify("view: begin", err, phaseTx, false)
	}
	defer func() {
		if err != nil {
			tx.rollback()
		}
	}()
	if err := fn(tx.tx()); err != nil {
		return err
	}
	if err := tx.commit(ctx); err != nil {
		return classify("view: commit", err, phaseTx, tx.broken())
	}
	return nil
}
