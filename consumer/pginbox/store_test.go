package pginbox_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/rabbitkit/rabbitkit/consumer"
	"github.com/rabbitkit/rabbitkit/consumer/dedup"
	"github.com/rabbitkit/rabbitkit/consumer/pginbox"
	"github.com/rabbitkit/rabbitkit/internal/pgtest"
	"github.com/rabbitkit/rabbitkit/protocol"
)

func stampOf(stream string, seq int64) protocol.Stamp {
	return protocol.Stamp{Source: "t", Epoch: 1, Stream: stream, Seq: seq}
}

func markOp(s protocol.Stamp, effect func(pgx.Tx) error) consumer.Op[pgx.Tx] {
	return consumer.Op[pgx.Tx]{Key: dedup.KeyOf(s), Stamp: s, Mark: true, Verdict: dedup.Verdict{Kind: dedup.KindNew}, Effect: effect}
}

func incrOp(s protocol.Stamp, key string) consumer.Op[pgx.Tx] {
	return markOp(s, func(tx pgx.Tx) error { return incr(tx, key) })
}

func countOf(t *testing.T, s *pginbox.Store, key string) int64 {
	t.Helper()
	var n int64
	if err := s.View(context.Background(), func(tx pgx.Tx) (err error) { n, err = count(tx, key); return err }); err != nil {
		t.Fatal(err)
	}
	return n
}

func rows(t *testing.T, s *pginbox.Store) int {
	t.Helper()
	var n int
	if err := s.Pool().QueryRow(context.Background(), `SELECT count(*) FROM rabbitkit_inbox`).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

// Within one batch the second op of a stamp is a duplicate; ops without Mark run their effect
// (or nothing); a suspicious stamp of a new stream leaves no row behind.
func TestBatchSemantics(t *testing.T) {
	pool, _ := freshPool(t, 4)
	s := open(t, pool, pginbox.Options{})
	ctx := context.Background()
	b := &consumer.Batch[pgx.Tx]{Ops: []consumer.Op[pgx.Tx]{
		incrOp(stampOf("a", 1), "a1"),
		incrOp(stampOf("a", 1), "a1"), // the same stamp again
		{Key: dedup.Key{Source: "t", Stream: "plain"}, Effect: func(tx pgx.Tx) error { return incr(tx, "unstamped") }},
		{Key: dedup.Key{Source: "t", Stream: "plain"}},        // nothing to do
		incrOp(stampOf("huge", 1<<40), "huge"),                // suspicious: far beyond MaxAhead
		markOp(protocol.Stamp{Source: "t", Stream: "x"}, nil), // invalid stamp: suspicious
	}}
	if err := s.Commit(ctx, b); err != nil {
		t.Fatal(err)
	}
	wantKinds := []dedup.Kind{dedup.KindNew, dedup.KindDuplicate, 0, 0, dedup.KindSuspicious, dedup.KindSuspicious} // unmarked ops keep their Verdict
	for i, op := range b.Ops {
		if op.Err != nil {
			t.Errorf("op %d: %v", i, op.Err)
		}
		if op.Verdict.Kind != wantKinds[i] {
			t.Errorf("op %d: verdict %v, want %v", i, op.Verdict, wantKinds[i])
		}
	}
	for key, want := range map[string]int64{"a1": 1, "unstamped": 1, "huge": 0} {
		if n := countOf(t, s, key); n != want {
			t.Errorf("counter %s = %d, want %d", key, n, want)
		}
	}
	if n := rows(t, s); n != 1 {
		t.Errorf("%d inbox rows, want 1 (stream a): a suspicious stamp left a row", n)
	}
	// Without Mark a redelivery runs again: the store only decides for marked ops.
	b = &consumer.Batch[pgx.Tx]{Ops: []consumer.Op[pgx.Tx]{{Key: dedup.Key{Source: "t", Stream: "plain"}, Effect: func(tx pgx.Tx) error { return incr(tx, "unstamped") }}}}
	if err := s.Commit(ctx, b); err != nil {
		t.Fatal(err)
	}
	if n := countOf(t, s, "unstamped"); n != 2 {
		t.Errorf("unmarked effect ran %d times, want 2", n)
	}
}

// Stream names with NUL bytes, invalid UTF-8 and any byte order round-trip, and sort as Go does.
func TestBinaryKeys(t *testing.T) {
	pool, _ := freshPool(t, 4)
	s := open(t, pool, pginbox.Options{})
	ctx := context.Background()
	names := []string{"a\x00b", "\xff\xfe", "é", "Z", "a", "a\x00", ""}
	b := &consumer.Batch[pgx.Tx]{}
	for _, n := range names[:6] {
		st := protocol.Stamp{Source: "src\x00\xff", Epoch: 1, Stream: n, Seq: 1}
		b.Ops = append(b.Ops, incrOp(st, fmt.Sprintf("%x", n)))
	}
	if err := s.Commit(ctx, b); err != nil {
		t.Fatal(err)
	}
	states, err := s.Load(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(states) != 6 {
		t.Fatalf("Load: %d states, want 6", len(states))
	}
	for i := 1; i < len(states); i++ {
		if states[i-1].Key.Stream >= states[i].Key.Stream {
			t.Errorf("Load order %q before %q: SQL order is not Go's", states[i-1].Key.Stream, states[i].Key.Stream)
		}
	}
	again := &consumer.Batch[pgx.Tx]{}
	for _, n := range names[:6] {
		again.Ops = append(again.Ops, incrOp(protocol.Stamp{Source: "src\x00\xff", Epoch: 1, Stream: n, Seq: 1}, "never"))
	}
	if err := s.Commit(ctx, again); err != nil {
		t.Fatal(err)
	}
	for _, op := range again.Ops {
		if op.Verdict.Kind != dedup.KindDuplicate {
			t.Errorf("%q again: %v, want duplicate", op.Key.Stream, op.Verdict)
		}
	}
}

// A failing effect is excluded with the later ops of its stream and the rest commits, without
// savepoints; an effect that hits a deadlock reruns the whole batch instead, invisibly; when
// retries run out the error wraps ErrStoreUnavailable.
func TestEffectFailuresAndRetries(t *testing.T) {
	pool, _ := freshPool(t, 4)
	s := open(t, pool, pginbox.Options{MaxTxRetries: 2})
	ctx := context.Background()
	deadlock := &pgconn.PgError{Code: "40P01", Severity: "ERROR", Message: "deadlock detected"}
	calls := 0
	b := &consumer.Batch[pgx.Tx]{Ops: []consumer.Op[pgx.Tx]{
		incrOp(stampOf("a", 1), "a1"),
		markOp(stampOf("b", 1), func(tx pgx.Tx) error {
			calls++
			if err := incr(tx, "b1"); err != nil {
				return err
			}
			if calls == 1 {
				return fmt.Errorf("handler: %w", deadlock) // as if its own query lost a deadlock
			}
			return nil
		}),
		markOp(stampOf("c", 1), func(tx pgx.Tx) error {
			_, err := tx.Exec(context.Background(), `SELECT * FROM no_such_table`)
			return err
		}),
		incrOp(stampOf("c", 2), "c2"),
	}}
	if err := s.Commit(ctx, b); err != nil {
		t.Fatal(err)
	}
	if calls != 3 { // the deadlock reruns everything, c1's failure reruns without c1 and c2
		t.Errorf("deadlocked effect ran %d times, want 3", calls)
	}
	if b.Ops[0].Err != nil || b.Ops[1].Err != nil {
		t.Errorf("ops a1, b1: %v, %v", b.Ops[0].Err, b.Ops[1].Err)
	}
	var pe *pgconn.PgError
	if !errors.As(b.Ops[2].Err, &pe) || pe.Code != "42P01" {
		t.Errorf("op c1: %v, want the handler's 42P01", b.Ops[2].Err)
	}
	if !errors.Is(b.Ops[3].Err, consumer.ErrSkipped) {
		t.Errorf("op c2: %v, want ErrSkipped", b.Ops[3].Err)
	}
	for key, want := range map[string]int64{"a1": 1, "b1": 1, "c2": 0} {
		if n := countOf(t, s, key); n != want {
			t.Errorf("counter %s = %d, want %d", key, n, want)
		}
	}

	always := &consumer.Batch[pgx.Tx]{Ops: []consumer.Op[pgx.Tx]{markOp(stampOf("d", 1), func(pgx.Tx) error { return deadlock })}}
	err := s.Commit(ctx, always)
	if !errors.Is(err, consumer.ErrStoreUnavailable) || errors.Is(err, consumer.ErrCommitUnknown) {
		t.Fatalf("Commit with a deadlock every time: %v, want ErrStoreUnavailable", err)
	}
	if !strings.Contains(err.Error(), "3 attempts") {
		t.Errorf("error %q does not say 3 attempts (MaxTxRetries 2)", err)
	}
}

// A row that does not decode fails the Commit that needs it with ErrStore naming the row.
func TestCorruptRow(t *testing.T) {
	pool, _ := freshPool(t, 4)
	s := open(t, pool, pginbox.Options{})
	ctx := context.Background()
	if err := s.Commit(ctx, &consumer.Batch[pgx.Tx]{Ops: []consumer.Op[pgx.Tx]{incrOp(stampOf("bad", 1), "x")}}); err != nil {
		t.Fatal(err)
	}
	if _, err := pool.Exec(ctx, `UPDATE rabbitkit_inbox SET state = '\x01020304050607'`); err != nil {
		t.Fatal(err)
	}
	err := s.Commit(ctx, &consumer.Batch[pgx.Tx]{Ops: []consumer.Op[pgx.Tx]{incrOp(stampOf("bad", 2), "x")}})
	if !errors.Is(err, consumer.ErrStore) || !errors.Is(err, dedup.ErrCorrupt) || !strings.Contains(err.Error(), `stream "bad"`) || !strings.Contains(err.Error(), "rabbitkit_inbox") {
		t.Fatalf("Commit over a corrupt row: %v; want ErrStore, dedup.ErrCorrupt, naming table and stream", err)
	}
	if errors.Is(err, consumer.ErrStoreUnavailable) {
		t.Fatalf("a corrupt row is not worth retrying: %v", err)
	}
}

// Several processes Open the same table at once: one migrates, the others wait and find it done.
func TestConcurrentOpen(t *testing.T) {
	dsn := pgtest.DSN(t)
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for range 8 {
		pool := pgtest.PoolOn(t, dsn, 1)
		wg.Go(func() {
			s, err := pginbox.Open(context.Background(), pool, pginbox.Options{Table: "shared_inbox"})
			if err != nil {
				errs <- err
				return
			}
			errs <- s.Close()
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatalf("concurrent Open: %v", err)
		}
	}
	pool := pgtest.PoolOn(t, dsn, 1)
	var versions int
	if err := pool.QueryRow(context.Background(), `SELECT count(*) FROM shared_inbox_schema`).Scan(&versions); err != nil {
		t.Fatal(err)
	}
	if versions != pginbox.SchemaVersion {
		t.Fatalf("%d migration records, want %d", versions, pginbox.SchemaVersion)
	}
}

// A table migrated by a newer version is refused; a schema-qualified table works.
func TestSchemaVersions(t *testing.T) {
	pool, _ := freshPool(t, 2)
	ctx := context.Background()
	if _, err := pool.Exec(ctx, `CREATE SCHEMA app`); err != nil {
		t.Fatal(err)
	}
	s := open(t, pool, pginbox.Options{Table: "app.inbox"})
	if err := s.Commit(ctx, &consumer.Batch[pgx.Tx]{Ops: []consumer.Op[pgx.Tx]{incrOp(stampOf("a", 1), "a")}}); err != nil {
		t.Fatal(err)
	}
	_ = s.Close()
	s = open(t, pool, pginbox.Options{Table: "app.inbox"}) // reopening a current schema is a no-op
	_ = s.Close()
	if _, err := pool.Exec(ctx, `INSERT INTO app.inbox_schema (version, note) VALUES ($1, 'from the future')`, pginbox.SchemaVersion+1); err != nil {
		t.Fatal(err)
	}
	_, err := pginbox.Open(ctx, pool, pginbox.Options{Table: "app.inbox"})
	if !errors.Is(err, pginbox.ErrSchemaVersion) || !strings.Contains(err.Error(), "app.inbox") {
		t.Fatalf("Open of a newer schema: %v, want ErrSchemaVersion naming the table", err)
	}
	if _, err := pginbox.Open(ctx, pool, pginbox.Options{Table: "bad name"}); !errors.Is(err, consumer.ErrInvalidConfig) {
		t.Fatalf("Open with a bad table name: %v, want ErrInvalidConfig", err)
	}
	if _, err := pginbox.Open(ctx, pool, pginbox.Options{Dedup: dedup.Config{GapGrace: -1}}); !errors.Is(err, consumer.ErrInvalidConfig) {
		t.Fatalf("Open with a bad dedup config: %v, want ErrInvalidConfig", err)
	}
}

// expire_at follows the tracker: set for an open gap, cleared once it is reported; ForgetAfter
// deletes an idle stream's row and reports it once.
func TestExpireAt(t *testing.T) {
	pool, _ := freshPool(t, 4)
	cfg := dedup.Config{GapGrace: time.Second, IdleRetention: time.Hour, ForgetAfter: 2 * time.Hour}
	s := open(t, pool, pginbox.Options{Dedup: cfg})
	ctx := context.Background()
	if err := s.Commit(ctx, &consumer.Batch[pgx.Tx]{Ops: []consumer.Op[pgx.Tx]{
		incrOp(stampOf("g", 1), "g"), incrOp(stampOf("g", 3), "g"), incrOp(stampOf("idle", 1), "i"),
	}}); err != nil {
		t.Fatal(err)
	}
	expireAt := func(stream string) *time.Time {
		var at *time.Time
		if err := pool.QueryRow(ctx, `SELECT expire_at FROM rabbitkit_inbox WHERE stream = $1`, []byte(stream)).Scan(&at); err != nil {
			t.Fatal(err)
		}
		return at
	}
	if at := expireAt("g"); at == nil || time.Until(*at) > time.Second || time.Until(*at) < 0 {
		t.Fatalf("expire_at of a stream with a fresh gap: %v, want about 1 s from now", at)
	}
	b := &consumer.Batch[pgx.Tx]{Expire: time.Now().Add(2 * time.Second)}
	if err := s.Commit(ctx, b); err != nil {
		t.Fatal(err)
	}
	if len(b.Events) != 1 || b.Events[0].Kind != dedup.EventGapDetected {
		t.Fatalf("events %v, want the gap", b.Events)
	}
	if at := expireAt("g"); at == nil || time.Until(*at) < 50*time.Minute {
		t.Fatalf("expire_at after the report: %v, want the idle compaction in about an hour", at)
	}
	b = &consumer.Batch[pgx.Tx]{Expire: time.Now().Add(3 * time.Hour)}
	if err := s.Commit(ctx, b); err != nil {
		t.Fatal(err)
	}
	forgotten := 0
	for _, e := range b.Events {
		if e.Kind == dedup.EventStreamForgotten {
			forgotten++
		}
	}
	if forgotten != 2 || rows(t, s) != 0 {
		t.Fatalf("after ForgetAfter: events %v, %d rows; want both streams forgotten, no rows", b.Events, rows(t, s))
	}
}

// View is read-only; Claim admits many; everything after Close is ErrClosed.
func TestViewClaimClose(t *testing.T) {
	pool, _ := freshPool(t, 4)
	s := open(t, pool, pginbox.Options{})
	ctx := context.Background()
	err := s.View(ctx, func(tx pgx.Tx) error { return incr(tx, "x") })
	var pe *pgconn.PgError
	if !errors.As(err, &pe) || pe.Code != "25006" {
		t.Fatalf("a write in View: %v, want 25006 read_only_sql_transaction", err)
	}
	r1, err1 := s.Claim(ctx)
	r2, err2 := s.Claim(ctx)
	if err1 != nil || err2 != nil {
		t.Fatalf("Claims: %v, %v", err1, err2)
	}
	r1()
	r2()
	if _, err := s.Peek(ctx, nil); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Peek(ctx, []dedup.Key{{Source: "a", Stream: "b"}}); !errors.Is(err, consumer.ErrClosed) {
		t.Fatalf("Peek after Close: %v", err)
	}
	if err := pool.Ping(ctx); err != nil {
		t.Fatalf("Close closed the caller's pool: %v", err)
	}
}
