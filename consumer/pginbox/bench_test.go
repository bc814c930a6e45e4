package pginbox_test

import (
	"context"
	"fmt"
	"log/slog"
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

// roundTrips counts what a pgx connection sends that waits for an answer: each Exec, Query and
// QueryRow (BEGIN and COMMIT included), and each pipelined batch once.
type roundTrips struct{ n atomic.Int64 }

func (r *roundTrips) TraceQueryStart(ctx context.Context, _ *pgx.Conn, _ pgx.TraceQueryStartData) context.Context {
	r.n.Add(1)
	return ctx
}
func (r *roundTrips) TraceQueryEnd(context.Context, *pgx.Conn, pgx.TraceQueryEndData) {}
func (r *roundTrips) TraceBatchStart(ctx context.Context, _ *pgx.Conn, _ pgx.TraceBatchStartData) context.Context {
	r.n.Add(1)
	return ctx
}
func (r *roundTrips) TraceBatchQuery(context.Context, *pgx.Conn, pgx.TraceBatchQueryData) {}
func (r *roundTrips) TraceBatchEnd(context.Context, *pgx.Conn, pgx.TraceBatchEndData)     {}

func benchPool(b *testing.B) (*pgxpool.Pool, *roundTrips) {
	dsn := pgtest.DSN(b)
	cfg, err := pgxpool.ParseConfig(dsn)
	if err != nil {
		b.Fatal(err)
	}
	cfg.MaxConns = 2
	rt := &roundTrips{}
	cfg.ConnConfig.Tracer = rt
	pool, err := pgxpool.NewWithConfig(context.Background(), cfg)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(pool.Close)
	if _, err := pool.Exec(context.Background(), `CREATE TABLE effects (id text NOT NULL)`); err != nil {
		b.Fatal(err)
	}
	return pool, rt
}

// BenchmarkCommit: one transaction per batch of n messages, each message one single-row INSERT.
// raw is pgx alone (BEGIN, n INSERTs, COMMIT); inbox is the same INSERTs as Effects through
// Store.Commit with Mark (dedup rows locked, classified, written in the same transaction). The
// inbox sub-benchmark reports its msg/s as a ratio of raw's, measured just before in the same run.
func BenchmarkCommit(b *testing.B) {
	for _, n := range []int{100, 500} {
		var rawRate float64
		b.Run(fmt.Sprintf("raw/n=%d", n), func(b *testing.B) {
			pool, rt := benchPool(b)
			ctx := context.Background()
			seq := 0
			rt.n.Store(0)
			start := time.Now()
			for b.Loop() {
				tx, err := pool.Begin(ctx)
				if err != nil {
					b.Fatal(err)
				}
				for range n {
					seq++
					if _, err := tx.Exec(ctx, `INSERT INTO effects (id) VALUES ($1)`, fmt.Sprint("raw-", seq)); err != nil {
						b.Fatal(err)
					}
				}
				if err := tx.Commit(ctx); err != nil {
					b.Fatal(err)
				}
			}
			el := time.Since(start)
			rawRate = float64(seq) / el.Seconds()
			b.ReportMetric(rawRate, "msg/s")
			b.ReportMetric(float64(rt.n.Load())/float64(seq), "roundtrips/msg")
		})
		b.Run(fmt.Sprintf("inbox/n=%d", n), func(b *testing.B) {
			pool, rt := benchPool(b)
			ctx := context.Background()
			s, err := pginbox.Open(ctx, pool, pginbox.Options{Logger: slog.New(slog.DiscardHandler)})
			if err != nil {
				b.Fatal(err)
			}
			defer s.Close()
			seq := int64(0)
			rt.n.Store(0)
			start := time.Now()
			for b.Loop() {
				batch := &consumer.Batch[pgx.Tx]{Ops: make([]consumer.Op[pgx.Tx], 0, n)}
				for range n {
					seq++
					st := protocol.Stamp{Source: "bench", Epoch: 1, Stream: "orders", Seq: seq}
					id := fmt.Sprint("inbox-", seq)
					batch.Ops = append(batch.Ops, consumer.Op[pgx.Tx]{Key: dedup.KeyOf(st), Stamp: st, Mark: true, Effect: func(tx pgx.Tx) error {
						_, err := tx.Exec(ctx, `INSERT INTO effects (id) VALUES ($1)`, id)
						return err
					}})
				}
				if err := s.Commit(ctx, batch); err != nil {
					b.Fatal(err)
				}
				if batch.Ops[0].Verdict.Kind != dedup.KindNew || batch.Ops[0].Err != nil {
					b.Fatalf("op: %v, %v", batch.Ops[0].Verdict, batch.Ops[0].Err)
				}
			}
			el := time.Since(start)
			rate := float64(seq) / el.Seconds()
			b.ReportMetric(rate, "msg/s")
			b.ReportMetric(float64(rt.n.Load())/float64(seq), "roundtrips/msg")
			if rawRate > 0 {
				b.ReportMetric(rate/rawRate, "inbox/raw")
			}
		})
		// The same two, alternating batch by batch on one pool: the ratio under the same load
		// (the sequential pair above drifts when the machine is shared).
		b.Run(fmt.Sprintf("interleaved/n=%d", n), func(b *testing.B) {
			pool, _ := benchPool(b)
			ctx := context.Background()
			s, err := pginbox.Open(ctx, pool, pginbox.Options{Logger: slog.New(slog.DiscardHandler)})
			if err != nil {
				b.Fatal(err)
			}
			defer s.Close()
			var rawT, inboxT time.Duration
			seq := int64(0)
			msgs := 0
			for b.Loop() {
				t0 := time.Now()
				tx, err := pool.Begin(ctx)
				if err != nil {
					b.Fatal(err)
				}
				for i := range n {
					if _, err := tx.Exec(ctx, `INSERT INTO effects (id) VALUES ($1)`, fmt.Sprint("raw-", seq, "-", i)); err != nil {
						b.Fatal(err)
					}
				}
				if err := tx.Commit(ctx); err != nil {
					b.Fatal(err)
				}
				t1 := time.Now()
				batch := &consumer.Batch[pgx.Tx]{Ops: make([]consumer.Op[pgx.Tx], 0, n)}
				for range n {
					seq++
					st := protocol.Stamp{Source: "bench", Epoch: 1, Stream: "orders", Seq: seq}
					id := fmt.Sprint("inbox-", seq)
					batch.Ops = append(batch.Ops, consumer.Op[pgx.Tx]{Key: dedup.KeyOf(st), Stamp: st, Mark: true, Effect: func(tx pgx.Tx) error {
						_, err := tx.Exec(ctx, `INSERT INTO effects (id) VALUES ($1)`, id)
						return err
					}})
				}
				if err := s.Commit(ctx, batch); err != nil {
					b.Fatal(err)
				}
				rawT += t1.Sub(t0)
				inboxT += time.Since(t1)
				msgs += n
			}
			b.ReportMetric(float64(msgs)/rawT.Seconds(), "raw-msg/s")
			b.ReportMetric(float64(msgs)/inboxT.Seconds(), "inbox-msg/s")
			b.ReportMetric(rawT.Seconds()/inboxT.Seconds(), "inbox/raw")
		})
	}
}

// TestSoakTableSize (-rk.soak; skipped otherwise): one million marked messages over 100 streams,
// then over 1,000, in batches of 500. The table holds one row per stream, and its size is set by
// the streams, not by the traffic: it is measured after 100,000 messages and again after 1,000,000.
func TestSoakTableSize(t *testing.T) {
	if !*soak {
		t.Skip("run with -rk.soak")
	}
	for _, streams := range []int{100, 1000} {
		t.Run(fmt.Sprint("streams=", streams), func(t *testing.T) { soakTableSize(t, streams) })
	}
}

func soakTableSize(t *testing.T, streams int) {
	pool := pgtest.Pool(t)
	ctx := context.Background()
	s := open(t, pool, pginbox.Options{})
	const total, per = 1_000_000, 500
	size := func() (rows, bytes int64) {
		if err := pool.QueryRow(ctx, `SELECT count(*), pg_total_relation_size('rabbitkit_inbox') FROM rabbitkit_inbox`).Scan(&rows, &bytes); err != nil {
			t.Fatal(err)
		}
		return rows, bytes
	}
	seqs := make([]int64, streams)
	var rows10, bytes10 int64
	start := time.Now()
	for sent := 0; sent < total; sent += per {
		b := &consumer.Batch[pgx.Tx]{Ops: make([]consumer.Op[pgx.Tx], 0, per)}
		for i := range per {
			k := (sent + i) % streams
			seqs[k]++
			st := protocol.Stamp{Source: "soak", Epoch: 1, Stream: fmt.Sprint("s", k), Seq: seqs[k]}
			b.Ops = append(b.Ops, consumer.Op[pgx.Tx]{Key: dedup.KeyOf(st), Stamp: st, Mark: true})
		}
		if err := s.Commit(ctx, b); err != nil {
			t.Fatal(err)
		}
		if sent+per == total/10 {
			rows10, bytes10 = size()
		}
	}
	el := time.Since(start)
	rows, bytes := size()
	t.Logf("%d messages over %d streams in %v (%.0f msg/s): after 100k: %d rows, %d bytes; after 1M: %d rows, %d bytes",
		total, streams, el.Round(time.Millisecond), float64(total)/el.Seconds(), rows10, bytes10, rows, bytes)
	if rows != int64(streams) {
		t.Fatalf("%d rows, want %d (one per stream)", rows, streams)
	}
	if bytes > 4*bytes10+(1<<20) {
		t.Fatalf("the table grew with traffic: %d bytes after 100k messages, %d after 1M", bytes10, bytes)
	}
}
