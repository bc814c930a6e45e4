package pginbox

import (
	"context"
	"time"

	"github.com/rabbitkit/rabbitkit/consumer"
)

// Leases of partitioned groups (consumer.Group): the store is also a consumer.Leaser, in two
// tables beside the inbox, <table>_members (grp, member, expires) and <table>_leases (grp, part,
// owner, expires). Every time is the database's now(), so the members' clocks do not matter.
// Each call is one short transaction; a lease row is locked only while it changes hands.

const usInterval = ` * interval '1 microsecond'`

// inTx runs fn in one read-write transaction and commits it.
func (c *core[T]) inTx(ctx context.Context, what string, fn func(tx txn[T]) error) (err error) {
	if err := c.enter(); err != nil {
		return err
	}
	defer c.wg.Done()
	ctx, cancel := context.WithTimeout(ctx, c.opts.TxTimeout)
	defer cancel()
	tx, err := c.d.begin(ctx, false)
	if err != nil {
		return classify(what+": begin", err, phaseTx, false)
	}
	committed := false
	defer func() {
		if !committed { // an error, or a panic: never leave the connection in a transaction
			tx.rollback()
		}
	}()
	if err := fn(tx); err != nil {
		return classify(what, err, phaseTx, tx.broken())
	}
	committed = true // COMMIT ends the transaction either way
	if err := tx.commit(ctx); err != nil {
		return classify(what+": commit", err, phaseCommit, tx.broken())
	}
	return nil
}

func scanParts(out *[]int) func(scanner) error {
	return func(s scanner) error {
		var p int32
		if err := s.Scan(&p); err != nil {
			return err
		}
		*out = append(*out, int(p))
		return nil
	}
}

func (c *core[T]) renew(ctx context.Context, group, member string, n int, ttl time.Duration) (held []int, share int, err error) {
	var live []string
	err = c.inTx(ctx, "lease renew", func(tx txn[T]) error {
		us := ttl.Microseconds()
		if err := tx.exec(ctx, `INSERT INTO `+c.q.membersT+` (grp, member, expires) VALUES ($1, $2, now() + $3`+usInterval+`)
			ON CONFLICT (grp, member) DO UPDATE SET expires = excluded.expires`, group, member, us); err != nil {
			return err
		}
		if err := tx.exec(ctx, `DELETE FROM `+c.q.membersT+` WHERE grp = $1 AND expires < now() - interval '1 hour'`, group); err != nil {
			return err
		}
		if err := tx.query(ctx, `UPDATE `+c.q.leasesT+` SET expires = now() + $3`+usInterval+`
			WHERE grp = $1 AND owner = $2 AND expires > now() AND part < $4 RETURNING part`,
			[]any{group, member, us, n}, scanParts(&held)); err != nil {
			return err
		}
		return tx.query(ctx, `SELECT member FROM `+c.q.membersT+` WHERE grp = $1 AND expires > now() ORDER BY member COLLATE "C"`,
			[]any{group}, func(s scanner) error {
				var m string
				if err := s.Scan(&m); err != nil {
					return err
				}
				live = append(live, m)
				return nil
			})
	})
	if err != nil {
		return nil, 0, err
	}
	return held, fairShare(live, member, n), nil
}

// fairShare is member's share of n partitions among live (sorted): n/m, plus one for the first
// n%m members.
func fairShare(live []string, member string, n int) int {
	m := len(live)
	if m == 0 {
		return n
	}
	k := 0
	for k < m && live[k] != member {
		k++
	}
	share := n / m
	if k < n%m {
		share++
	}
	return share
}

func (c *core[T]) acquire(ctx context.Context, group, member string, n, maxN int, ttl time.Duration) (got []int, err error) {
	if maxN <= 0 {
		return nil, nil
	}
	err = c.inTx(ctx, "lease acquire", func(tx txn[T]) error {
		if err := tx.exec(ctx, `INSERT INTO `+c.q.leasesT+` (grp, part) SELECT $1, g FROM generate_series(0, $2 - 1) AS g
			ON CONFLICT (grp, part) DO NOTHING`, group, n); err != nil {
			return err
		}
		return tx.query(ctx, `UPDATE `+c.q.leasesT+` SET owner = $2, expires = now() + $3`+usInterval+`
			WHERE grp = $1 AND part IN (
				SELECT part FROM `+c.q.leasesT+` WHERE grp = $1 AND part < $4 AND (owner = '' OR expires <= now())
				ORDER BY part LIMIT $5 FOR UPDATE SKIP LOCKED)
			RETURNING part`, []any{group, member, ttl.Microseconds(), n, maxN}, scanParts(&got))
	})
	return got, err
}

func (c *core[T]) release(ctx context.Context, group, member string, parts []int) error {
	if len(parts) == 0 {
		return nil
	}
	ps, valid := make([]int64, len(parts)), make([]bool, len(parts))
	for i, p := range parts {
		ps[i], valid[i] = int64(p), true
	}
	return c.inTx(ctx, "lease release", func(tx txn[T]) error {
		return tx.exec(ctx, `UPDATE `+c.q.leasesT+` SET owner = '', expires = '-infinity'
			WHERE grp = $1 AND owner = $2 AND part = ANY($3::int8[])`, group, member, c.d.int8s(ps, valid))
	})
}

func (c *core[T]) leave(ctx context.Context, group, member string) error {
	return c.inTx(ctx, "lease leave", func(tx txn[T]) error {
		if err := tx.exec(ctx, `UPDATE `+c.q.leasesT+` SET owner = '', expires = '-infinity' WHERE grp = $1 AND owner = $2`, group, member); err != nil {
			return err
		}
		return tx.exec(ctx, `DELETE FROM `+c.q.membersT+` WHERE grp = $1 AND member = $2`, group, member)
	})
}

var (
	_ consumer.Leaser = (*Store)(nil)
	_ consumer.Leaser = (*SQLStore)(nil)
)

// Renew implements consumer.Leaser (partitioned groups, consumer.Group).
func (s *Store) Renew(ctx context.Context, group, member string, n int, ttl time.Duration) ([]int, int, error) {
	return s.c.renew(ctx, group, member, n, ttl)
}

// Acquire implements consumer.Leaser.
func (s *Store) Acquire(ctx context.Context, group, member string, n, max int, ttl time.Duration) ([]int, error) {
	return s.c.acquire(ctx, group, member, n, max, ttl)
}

// Release implements consumer.Leaser.
func (s *Store) Release(ctx context.Context, group, member string, parts []int) error {
	return s.c.release(ctx, group, member, parts)
}

// Leave implements consumer.Leaser.
func (s *Store) Leave(ctx context.Context, group, member string) error {
	return s.c.leave(ctx, group, member)
}

// Renew implements consumer.Leaser (partitioned groups, consumer.Group).
func (s *SQLStore) Renew(ctx context.Context, group, member string, n int, ttl time.Duration) ([]int, int, error) {
	return s.c.renew(ctx, group, member, n, ttl)
}

// Acquire implements consumer.Leaser.
func (s *SQLStore) Acquire(ctx context.Context, group, member string, n, max int, ttl time.Duration) ([]int, error) {
	return s.c.acquire(ctx, group, member, n, max, ttl)
}

// Release implements consumer.Leaser.
func (s *SQLStore) Release(ctx context.Context, group, member string, parts []int) error {
	return s.c.release(ctx, group, member, parts)
}

// Leave implements consumer.Leaser.
func (s *SQLStore) Leave(ctx context.Context, group, member string) error {
	return s.c.leave(ctx, group, member)
}
