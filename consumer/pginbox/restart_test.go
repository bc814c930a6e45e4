package pginbox_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/rabbitkit/rabbitkit/consumer"
	"github.com/rabbitkit/rabbitkit/consumer/dedup"
	"github.com/rabbitkit/rabbitkit/consumer/pginbox"
	"github.com/rabbitkit/rabbitkit/internal/pgtest"
	"github.com/rabbitkit/rabbitkit/protocol"
)

// PostgreSQL crashes (immediate stop) twice while batches commit, and comes back: every Commit
// error meanwhile wraps ErrStoreUnavailable, and committing again ends with every effect applied
// exactly once.
func TestServerCrashAndRestart(t *testing.T) {
	if testing.Short() {
		t.Skip("-short")
	}
	srv := pgtest.Private(t)
	dsn := srv.DSN(t)
	ctx := context.Background()
	cfg, err := pgxpool.ParseConfig(dsn)
	if err != nil {
		t.Fatal(err)
	}
	cfg.MaxConns = 4
	cfg.ConnConfig.ConnectTimeout = time.Second
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	if _, err := pool.Exec(ctx, `CREATE TABLE effects (id text NOT NULL)`); err != nil {
		t.Fatal(err)
	}
	store, err := pginbox.Open(ctx, pool, pginbox.Options{TxTimeout: 3 * time.Second, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()

	var stop atomic.Bool
	var unavailable, unknown, committed atomic.Int64
	var wg sync.WaitGroup
	for w := range 4 {
		wg.Go(func() {
			seq := int64(0)
			for !stop.Load() {
				var stamps []protocol.Stamp
				for range 10 {
					seq++
					stamps = append(stamps, protocol.Stamp{Source: "crash", Epoch: 1, Stream: fmt.Sprint("w", w), Seq: seq})
				}
				for attempt := 0; ; attempt++ {
					b := &consumer.Batch[pgx.Tx]{}
					for _, s := range stamps {
						id := s.String()
						b.Ops = append(b.Ops, consumer.Op[pgx.Tx]{Key: dedup.KeyOf(s), Stamp: s, Mark: true, Effect: func(tx pgx.Tx) error {
							_, err := tx.Exec(context.Background(), `INSERT INTO effects (id) VALUES ($1)`, id)
							return err
						}})
					}
					err := store.Commit(ctx, b)
					if err == nil {
						committed.Add(int64(len(stamps)))
						break
					}
					if !errors.Is(err, consumer.ErrStoreUnavailable) {
						t.Errorf("Commit during a crash: %v, want ErrStoreUnavailable", err)
						return
					}
					unavailable.Add(1)
					if errors.Is(err, consumer.ErrCommitUnknown) {
						unknown.Add(1)
					}
					if attempt > 300 {
						t.Errorf("still failing after %d attempts: %v", attempt, err)
						return
					}
					time.Sleep(20 * time.Millisecond)
				}
			}
		})
	}
	for range 2 {
		time.Sleep(700 * time.Millisecond)
		srv.Stop(t)
		time.Sleep(500 * time.Millisecond)
		srv.Start(t)
	}
	time.Sleep(700 * time.Millisecond)
	stop.Store(true)
	wg.Wait()

	var rowsN, distinct int64
	if err := pool.QueryRow(ctx, `SELECT count(*), count(DISTINCT id) FROM effects`).Scan(&rowsN, &distinct); err != nil {
		t.Fatal(err)
	}
	t.Logf("%d messages committed; %d Commit errors (ErrStoreUnavailable), %d with unknown outcome; %d rows, %d distinct", committed.Load(), unavailable.Load(), unknown.Load(), rowsN, distinct)
	if unavailable.Load() == 0 {
		t.Error("no Commit failed: the crashes were not seen")
	}
	if rowsN != distinct || distinct != committed.Load() {
		t.Fatalf("%d rows, %d distinct, %d messages committed: want all equal", rowsN, distinct, committed.Load())
	}
}
