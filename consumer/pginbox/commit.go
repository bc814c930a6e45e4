package pginbox

import (
	"bytes"
	"cmp"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"time"

	"github.com/rabbitkit/rabbitkit/consumer"
	"github.com/rabbitkit/rabbitkit/consumer/dedup"
)

// commit is Store.Commit; see its doc.
func (c *core[T]) commit(ctx context.Context, b *consumer.Batch[T]) error {
	if err := c.enter(); err != nil {
		return err
	}
	defer c.wg.Done()
	for i := range b.Ops {
		b.Ops[i].Err = nil
	}
	b.Events = nil
	if len(b.Ops) == 0 && b.Expire.IsZero() {
		return nil
	}
	keys := markedKeys(b)
	retries := 0
	for {
		evs, err := c.attempt(ctx, b, keys)
		var re *errRetry
		switch {
		case err == nil:
			b.Events = evs
			return nil
		case errors.Is(err, errRerun):
			continue // an op failed and is excluded now: at most len(b.Ops) reruns
		case errors.As(err, &re):
			if retries >= c.opts.MaxTxRetries {
				return fmt.Errorf("pginbox: commit: %w: %d attempts failed, the last with: %w", consumer.ErrStoreUnavailable, retries+1, re.err)
			}
			retries++
			c.log.Debug("pginbox: retrying a commit", "table", c.q.table, "attempt", retries+1, "err", re.err)
			if err := sleepCtx(ctx, backoff(retries)); err != nil {
				return fmt.Errorf("pginbox: commit: %w: %w (while retrying after %w)", consumer.ErrStoreUnavailable, err, re.err)
			}
		default:
			return err
		}
	}
}

// markedKeys returns the distinct keys of b's ops with Mark or Start, in dedup.Key order (Source, then
// Stream, bytewise): the order every transaction locks rows in.
func markedKeys[T any](b *consumer.Batch[T]) []dedup.Key {
	var keys []dedup.Key
	for i := range b.Ops {
		if b.Ops[i].Mark || b.Ops[i].Start {
			keys = append(keys, b.Ops[i].Key)
		}
	}
	slices.SortFunc(keys, compareKeys)
	return slices.Compact(keys)
}

func compareKeys(a, b dedup.Key) int {
	if c := cmp.Compare(a.Source, b.Source); c != 0 {
		return c
	}
	return cmp.Compare(a.Stream, b.Stream)
}

// backoff is a short jittered pause before rerunning a transaction that lost a race.
func backoff(attempt int) time.Duration {
	d := 5 * time.Millisecond << min(attempt-1, 5)
	return d/2 + rand.N(d)
}

func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return context.Cause(ctx)
	}
}

// attempt runs b in one transaction. It returns the events to report once committed, errRerun
// when an effect failed (its op's Err is set), an *errRetry for a race lost to another
// transaction, or the classified error.
func (c *core[T]) attempt(ctx context.Context, b *consumer.Batch[T], keys []dedup.Key) (_ []dedup.Event, err error) {
	ctx, cancel := context.WithTimeout(ctx, c.opts.TxTimeout)
	defer cancel()
	tx, err := c.d.begin(ctx, false)
	if err != nil {
		return nil, classify("commit: begin", err, phaseTx, false)
	}
	committing := false
	defer func() {
		if err != nil && !committing {
			tx.rollback()
		}
	}()
	fail := func(what string, err error) error { return classify(what, err, phaseTx, tx.broken()) }

	tr, err := dedup.New(c.cfg)
	if err != nil {
		return nil, fmt.Errorf("%w: pginbox: %w", consumer.ErrStore, err)
	}
	locked := make(map[dedup.Key]row, len(keys))
	var order []dedup.Key // locked rows, in the order read
	load := func(r row) error {
		if r.state != nil {
			if err := tr.Load(r.key, r.state); err != nil {
				return fmt.Errorf("%w: pginbox: table %s, row (source %q, stream %q): %w", consumer.ErrStore, c.q.table, r.key.Source, r.key.Stream, err)
			}
		}
		locked[r.key] = r
		order = append(order, r.key)
		return nil
	}

	// 1. Rows for new streams, then every row of the batch locked, in key order, in one round trip.
	if len(keys) > 0 {
		args := keyArgs(c.d, keys)
		var loadErr error
		err := tx.execQuery(ctx, c.q.insert, args, c.q.lock, args, func(s scanner) error {
			r, err := scanRow(s)
			if err != nil {
				return err
			}
			if err := load(r); err != nil {
				loadErr = err
				return err
			}
			return nil
		})
		if loadErr != nil {
			return nil, loadErr
		}
		if err != nil {
			return nil, fail("commit: lock rows", err)
		}
		if len(locked) != len(keys) {
			// A row was deleted (an Expire forgot its stream) between our INSERT and SELECT.
			return nil, &errRetry{fmt.Errorf("pginbox: commit: %d of %d rows vanished before they were locked", len(keys)-len(locked), len(keys))}
		}
	}

	// 2. Classify, run the effects of what is new, record the marks.
	now := time.Now()
	var evs []dedup.Event
	for i := range b.Ops {
		op := &b.Ops[i]
		if op.Err != nil {
			continue // excluded by an earlier attempt
		}
		if op.Start {
			op.Starts = tr.Start(op.Stamp, now)
			op.Verdict = dedup.Verdict{Kind: dedup.KindNew}
			if op.Starts == 0 {
				op.Verdict = tr.Classify(op.Stamp)
			}
			continue
		}
		if op.Mark {
			if op.Redrive {
				// A re-driven parked message: applied once, while the locked state still holds
				// its stamp as parked.
				if !tr.IsParked(op.Stamp) {
					op.Verdict = dedup.Verdict{Kind: dedup.KindDuplicate}
					continue
				}
				op.Verdict = dedup.Verdict{Kind: dedup.KindNew}
			} else if op.Verdict = tr.Classify(op.Stamp); op.Verdict.Kind != dedup.KindNew {
				continue
			}
		}
		if op.Effect != nil {
			if err := callEffect(op.Effect, tx.tx()); err != nil {
				code, _ := sqlState(err)
				if retryableState(code) {
					return nil, &errRetry{fmt.Errorf("pginbox: commit: effect of %s: %w", op.Key, err)}
				}
				// The connection or the attempt's time is gone: the store's failure, not the handler's.
				if tx.broken() || ctx.Err() != nil || unavailableState(code) {
					return nil, fail("commit: effect of "+op.Key.String(), err)
				}
				op.Err = err
				for j := i + 1; j < len(b.Ops); j++ {
					if b.Ops[j].Key == op.Key && b.Ops[j].Err == nil {
						b.Ops[j].Err = fmt.Errorf("%w (stream %s)", consumer.ErrSkipped, op.Key)
					}
				}
				return nil, errRerun
			}
		}
		switch {
		case !op.Mark:
		case op.Redrive:
			tr.Unpark(op.Stamp)
		case op.Park:
			_, e := tr.CommitParked(op.Stamp, op.Hash, now)
			evs = append(evs, e...)
		default:
			_, e := tr.Commit(op.Stamp, op.Hash, now)
			evs = append(evs, e...)
		}
	}

	// 3. Time-driven expiry of the rows due that no other transaction holds.
	if !b.Expire.IsZero() {
		var loadErr error
		err := tx.query(ctx, c.q.due, []any{b.Expire, c.opts.ExpireLimit}, func(s scanner) error {
			r, err := scanRow(s)
			if err != nil {
				return err
			}
			if _, mine := locked[r.key]; mine {
				return nil // locked above, and already in the tracker (with this batch's marks)
			}
			if err := load(r); err != nil {
				loadErr = err
				return err
			}
			return nil
		})
		if loadErr != nil {
			return nil, loadErr
		}
		if err != nil {
			return nil, fail("commit: expire", err)
		}
		evs = append(evs, tr.Expire(b.Expire)...)
	}

	// 4. Write what changed: state and next expiry; delete rows left without state.
	var src, str, states [][]byte
	var exps []int64
	var valid []bool
	var gone []dedup.Key
	for _, k := range order {
		old := locked[k]
		buf, ok := tr.AppendState(nil, k)
		if !ok {
			gone = append(gone, k)
			continue
		}
		var exp int64
		if at, ok := tr.NextExpiry(k); ok {
			exp = ceilMicro(at)
		}
		if bytes.Equal(buf, old.state) && exp == old.expire {
			continue
		}
		src, str, states = append(src, []byte(k.Source)), append(str, []byte(k.Stream)), append(states, buf)
		exps, valid = append(exps, exp), append(valid, exp != 0)
	}
	if len(src) > 0 {
		if err := tx.exec(ctx, c.q.update, c.d.byteas(src), c.d.byteas(str), c.d.byteas(states), c.d.int8s(exps, valid)); err != nil {
			return nil, fail("commit: write rows", err)
		}
	}
	if len(gone) > 0 {
		if err := tx.exec(ctx, c.q.del, keyArgs(c.d, gone)...); err != nil {
			return nil, fail("commit: delete rows", err)
		}
	}

	// 5. COMMIT. From here on a lost connection leaves the outcome unknown.
	committing = true
	if err := tx.commit(ctx); err != nil {
		return nil, classify("commit", err, phaseCommit, tx.broken())
	}
	return evs, nil
}

// ceilMicro returns t in unix microseconds, rounded up, so that a row is never due before the
// tracker would act on it; never 0 (which stands for NULL).
func ceilMicro(t time.Time) int64 {
	ns := t.UnixNano()
	us := ns / 1000
	if ns%1000 > 0 {
		us++
	}
	return max(us, 1)
}

func callEffect[T any](e func(T) error, tx T) (err error) {
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("%w: %v", consumer.ErrPanic, p)
		}
	}()
	return e(tx)
}
