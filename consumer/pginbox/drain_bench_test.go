package pginbox_test

// End-to-end benchmarks of the PostgreSQL inbox: a RabbitMQ queue drained by consumer.Consumer
// on a pginbox.Store, beside a plain amqp091-go consumer that writes the same rows with no dedup,
// in the same run, alternating. They run only with -bench; each sub-benchmark runs its rounds
// once whatever b.N is (read the reported metrics, not ns/op). Run with:
//
//	go test -run '^$' -bench 'InboxDrain|InboxGroup|InboxStartup' -benchtime 1x -timeout 60m ./consumer/pginbox/ -rk.rounds=3
//
// Split a -cpuprofile by path with -tagfocus 'path=^inbox$' (or raw, group).

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"runtime"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/rabbitkit/rabbitkit/consumer"
	"github.com/rabbitkit/rabbitkit/consumer/dedup"
	"github.com/rabbitkit/rabbitkit/consumer/pginbox"
	"github.com/rabbitkit/rabbitkit/internal/ledger"
	"github.com/rabbitkit/rabbitkit/internal/pgtest"
	"github.com/rabbitkit/rabbitkit/internal/testbroker"
	"github.com/rabbitkit/rabbitkit/metrics"
	"github.com/rabbitkit/rabbitkit/protocol"
	"github.com/rabbitkit/rabbitkit/topology"
)

var (
	drainRounds    = flag.Int("rk.rounds", 3, "BenchmarkInboxDrain, BenchmarkInboxGroup: alternating raw/inbox rounds (medians are reported)")
	drainMsgs      = flag.Int("rk.msgs", 20_000, "BenchmarkInboxDrain, BenchmarkInboxGroup: messages per drain")
	startupStreams = flag.Int("rk.startupstreams", 100_000, "BenchmarkInboxStartup: streams committed to the table before the consumer starts")
	startupMsgs    = flag.Int("rk.startupmsgs", 10_000, "BenchmarkInboxStartup: messages drained by the fresh consumer")
)

// The kit's defaults, used by the raw baseline too.
const (
	drainPrefetch = consumer.DefaultPrefetch // 2000
	drainMaxBatch = consumer.DefaultMaxBatch // 500
	drainBody     = 256
	ledgerTable   = "bench_ledger"
)

// pgCounter is a pgx tracer that counts round trips (each Exec, Query, QueryRow, BEGIN and COMMIT
// included, and each pipelined batch once) and remembers the server PIDs of the connections it saw,
// so that their backends' CPU can be read from /proc.
type pgCounter struct {
	n    atomic.Int64
	pids sync.Map // uint32 -> struct{}
}

func (c *pgCounter) seen(conn *pgx.Conn) {
	pid := conn.PgConn().PID()
	if _, ok := c.pids.Load(pid); !ok {
		c.pids.Store(pid, struct{}{})
	}
}

func (c *pgCounter) TraceQueryStart(ctx context.Context, conn *pgx.Conn, _ pgx.TraceQueryStartData) context.Context {
	c.n.Add(1)
	c.seen(conn)
	return ctx
}
func (c *pgCounter) TraceQueryEnd(context.Context, *pgx.Conn, pgx.TraceQueryEndData) {}
func (c *pgCounter) TraceBatchStart(ctx context.Context, conn *pgx.Conn, _ pgx.TraceBatchStartData) context.Context {
	c.n.Add(1)
	c.seen(conn)
	return ctx
}
func (c *pgCounter) TraceBatchQuery(context.Context, *pgx.Conn, pgx.TraceBatchQueryData) {}
func (c *pgCounter) TraceBatchEnd(context.Context, *pgx.Conn, pgx.TraceBatchEndData)     {}

// backendCPU returns the CPU time (user + system) the server backends seen by c have used so far.
func (c *pgCounter) backendCPU() map[uint32]time.Duration {
	out := map[uint32]time.Duration{}
	c.pids.Range(func(k, _ any) bool {
		pid := k.(uint32)
		out[pid] = procCPU(int(pid))
		return true
	})
	return out
}

// procCPU returns the CPU time of process pid (/proc/pid/stat utime + stime), or 0.
func procCPU(pid int) time.Duration {
	buf, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0
	}
	s := string(buf)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0
	}
	f := strings.Fields(s[i+1:]) // f[0] is field 3 (state): utime is field 14, stime 15
	if len(f) < 13 {
		return 0
	}
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(ut+st) * (time.Second / 100) // USER_HZ is 100 on Linux
}

func selfCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// benchDB is a fresh database with the ledger table and the inbox's tables.
type benchDB struct {
	dsn string
	led *ledger.PG
}

func newBenchDB(b *testing.B) *benchDB {
	b.Helper()
	db := &benchDB{dsn: pgtest.DSN(b)}
	led, err := ledger.NewPG(ledgerTable)
	if err != nil {
		b.Fatal(err)
	}
	db.led = led
	pool, _ := db.pool(b, 1)
	defer pool.Close()
	ctx := context.Background()
	if err := led.Create(ctx, pool); err != nil {
		b.Fatal(err)
	}
	s, err := pginbox.Open(ctx, pool, pginbox.Options{Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		b.Fatal(err)
	}
	_ = s.Close()
	return db
}

// pool returns a new pool of at most n connections, one of them connected, traced by a new counter.
func (db *benchDB) pool(b *testing.B, n int32) (*pgxpool.Pool, *pgCounter) {
	b.Helper()
	cfg, err := pgxpool.ParseConfig(db.dsn)
	if err != nil {
		b.Fatal(err)
	}
	cfg.MaxConns = n
	pc := &pgCounter{}
	cfg.ConnConfig.Tracer = pc
	pool, err := pgxpool.NewWithConfig(context.Background(), cfg)
	if err != nil {
		b.Fatal(err)
	}
	if _, err := pool.Exec(context.Background(), `SELECT 1`); err != nil {
		pool.Close()
		b.Fatal(err)
	}
	return pool, pc
}

// reset empties the ledger and the inbox table between drains (not timed).
func (db *benchDB) reset(b *testing.B) {
	b.Helper()
	pool, _ := db.pool(b, 1)
	defer pool.Close()
	if _, err := pool.Exec(context.Background(), `TRUNCATE `+ledgerTable+`, rabbitkit_inbox`); err != nil {
		b.Fatal(err)
	}
}

// ledgerRows counts the ledger's rows and its distinct stamps.
func (db *benchDB) ledgerRows(b *testing.B) (rows, distinct int64) {
	b.Helper()
	pool, _ := db.pool(b, 1)
	defer pool.Close()
	if err := pool.QueryRow(context.Background(), `SELECT count(*), count(DISTINCT (source, epoch, stream, seq)) FROM `+ledgerTable).Scan(&rows, &distinct); err != nil {
		b.Fatal(err)
	}
	return rows, distinct
}

// publishStamps publishes n persistent messages of drainBody bytes to exchange, the i-th stamped
// (v2, in message-id) with source "bench", epoch 1 and the stream and seq stampOf(i) returns, with
// the routing key keyOf(stream); confirmed in windows of 512.
func publishStamps(b *testing.B, conn *amqp.Connection, exchange string, keyOf func(stream string) string, n int, stampOf func(i int) (string, int64)) {
	b.Helper()
	ch, err := conn.Channel()
	if err != nil {
		b.Fatal(err)
	}
	defer ch.Close()
	if err := ch.Confirm(false); err != nil {
		b.Fatal(err)
	}
	body := make([]byte, drainBody)
	testbroker.PublishStamped(b, ch, exchange, keyOf, n, body, stampOf)
}

// roundRobin is the i-th message's stamp over streams "s0".."s<streams-1>", in turn.
func roundRobin(streams int) func(i int) (string, int64) {
	return func(i int) (string, int64) { return "s" + strconv.Itoa(i%streams), int64(i/streams + 1) }
}

// declareClassic declares q as a durable classic queue.
func declareClassic(b *testing.B, conn *amqp.Connection, q string) {
	b.Helper()
	ch, err := conn.Channel()
	if err != nil {
		b.Fatal(err)
	}
	defer ch.Close()
	if _, err := ch.QueueDeclare(q, true, false, false, false, amqp.Table{amqp.QueueTypeArg: amqp.QueueTypeClassic}); err != nil {
		b.Fatal(err)
	}
}

// drainStats is one drain's figures.
type drainStats struct {
	rate     float64 // msg/s, from the first delivery to the last ack
	cpu      float64 // this process's CPU µs per message (from the consumers' start to the last ack)
	pgCPU    float64 // the PostgreSQL backends' CPU µs per message (their connections' lifetime)
	rt       float64 // PostgreSQL round trips per message
	perBatch float64 // messages per transaction (per store commit for the inbox)
	txMs     float64 // mean wall time of a transaction (the inbox's: of a store commit, peek excluded)
}

// measure collects the figures common to both paths around a drain of n messages.
type measure struct {
	n        int
	counters []*pgCounter
	cpu0     time.Duration
	pg0      map[uint32]time.Duration
	first    atomic.Pointer[time.Time]
}

func startMeasure(n int, counters []*pgCounter) *measure {
	m := &measure{n: n, counters: counters, pg0: map[uint32]time.Duration{}}
	for _, c := range counters {
		c.n.Store(0)
		for pid, t := range c.backendCPU() {
			m.pg0[pid] = t
		}
	}
	m.cpu0 = selfCPU()
	return m
}

// delivered records the first delivery's time.
func (m *measure) delivered() {
	if m.first.Load() == nil {
		now := time.Now()
		m.first.CompareAndSwap(nil, &now)
	}
}

func (m *measure) stop(batches, txNs int64) drainStats {
	end := time.Now()
	cpu := selfCPU() - m.cpu0
	var rt int64
	var pg time.Duration
	for _, c := range m.counters {
		rt += c.n.Load()
		for pid, t := range c.backendCPU() {
			pg += t - m.pg0[pid] // a connection opened during the drain counts from its start
		}
	}
	n := float64(m.n)
	st := drainStats{
		rate:  n / end.Sub(*m.first.Load()).Seconds(),
		cpu:   float64(cpu) / float64(time.Microsecond) / n,
		pgCPU: float64(pg) / float64(time.Microsecond) / n,
		rt:    float64(rt) / n,
	}
	if batches > 0 {
		st.perBatch = n / float64(batches)
		st.txMs = float64(txNs) / 1e6 / float64(batches)
	}
	return st
}

// drainRaw drains n messages from queues with one plain amqp091-go consumer per entry of queues
// (each on its own connection and pool): prefetch drainPrefetch; a batch is the deliveries at hand,
// up to drainMaxBatch; per batch one transaction of single-row INSERTs (the ledger's row of each
// message's stamp), COMMIT, then one multiple ack. No dedup.
func drainRaw(b *testing.B, url string, db *benchDB, queues []string, n int) drainStats {
	b.Helper()
	type rawConsumer struct {
		conn *amqp.Connection
		pool *pgxpool.Pool
		pc   *pgCounter
	}
	cs := make([]*rawConsumer, len(queues))
	var counters []*pgCounter
	for i := range cs {
		pool, pc := db.pool(b, 2)
		cs[i] = &rawConsumer{pool: pool, pc: pc}
		counters = append(counters, pc)
	}
	defer func() {
		for _, c := range cs {
			if c.conn != nil {
				_ = c.conn.Close()
			}
			c.pool.Close()
		}
	}()
	m := startMeasure(n, counters)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var acked, batches, txNs atomic.Int64
	done := make(chan struct{})
	var doneOnce sync.Once
	finish := func() { doneOnce.Do(func() { close(done) }) }
	errs := make(chan error, len(cs))
	var wg sync.WaitGroup
	for i, c := range cs {
		conn, err := amqp.Dial(url)
		if err != nil {
			b.Fatal(err)
		}
		c.conn = conn
		ch, err := conn.Channel()
		if err != nil {
			b.Fatal(err)
		}
		if err := ch.Qos(drainPrefetch, 0, false); err != nil {
			b.Fatal(err)
		}
		in, err := ch.Consume(queues[i], "", false, false, false, false, nil)
		if err != nil {
			b.Fatal(err)
		}
		// amqp091-go hands deliveries over one at a time on an unbuffered channel: buffer them (as
		// the kit's session goroutine queues them for its worker), so that a batch is what has
		// arrived while the previous one committed.
		dels := make(chan amqp.Delivery, drainPrefetch)
		wg.Go(func() {
			defer close(dels)
			for d := range in {
				select {
				case dels <- d:
				case <-ctx.Done():
					return
				}
			}
		})
		wg.Go(func() {
			pprof.Do(ctx, pprof.Labels("path", "raw"), func(ctx context.Context) {
				errs <- rawLoop(ctx, dels, c.pool, db.led, m, &acked, &batches, &txNs, n, finish)
			})
		})
	}
	stopAll := func() {
		cancel()
		for _, c := range cs {
			_ = c.conn.Close() // ends the deliveries
		}
		wg.Wait()
	}
	select {
	case <-done:
	case err := <-errs:
		stopAll()
		b.Fatalf("raw consumer: %v", err)
	}
	st := m.stop(batches.Load(), txNs.Load())
	stopAll()
	for range cs {
		if err := <-errs; err != nil {
			b.Fatalf("raw consumer: %v", err)
		}
	}
	return st
}

func rawLoop(ctx context.Context, dels <-chan amqp.Delivery, pool *pgxpool.Pool, led *ledger.PG, m *measure, acked, batches, txNs *atomic.Int64, n int, finish func()) error {
	batch := make([]amqp.Delivery, 0, drainMaxBatch)
	for {
		batch = batch[:0]
		select {
		case <-ctx.Done():
			return nil
		case d, ok := <-dels:
			if !ok {
				return ctxOr(ctx, errors.New("deliveries closed"))
			}
			m.delivered()
			batch = append(batch, d)
		}
	more:
		for len(batch) < drainMaxBatch {
			select {
			case d, ok := <-dels:
				if !ok {
					break more
				}
				batch = append(batch, d)
			default:
				break more
			}
		}
		t0 := time.Now()
		tx, err := pool.Begin(ctx)
		if err != nil {
			return ctxOr(ctx, err)
		}
		for _, d := range batch {
			s, err := protocol.ParseMessageID(d.MessageId)
			if err != nil {
				_ = tx.Rollback(context.Background())
				return err
			}
			if err := led.Insert(ctx, tx, s); err != nil {
				_ = tx.Rollback(context.Background())
				return ctxOr(ctx, err)
			}
		}
		if err := tx.Commit(ctx); err != nil {
			return ctxOr(ctx, err)
		}
		txNs.Add(int64(time.Since(t0)))
		if err := batch[len(batch)-1].Ack(true); err != nil {
			return ctxOr(ctx, err)
		}
		batches.Add(1)
		if acked.Add(int64(len(batch))) >= int64(n) {
			finish()
		}
	}
}

func ctxOr(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		return nil
	}
	return err
}

// ackCounter counts the kit's acked deliveries and its store commits, and closes done at n acks.
type ackCounter struct {
	metrics.Nop
	n        int64
	acked    atomic.Int64
	commits  atomic.Int64
	commitNs atomic.Int64 // the commits' time, summed
	done     chan struct{}
	once     sync.Once
}

func newAckCounter(n int) *ackCounter { return &ackCounter{n: int64(n), done: make(chan struct{})} }

func (r *ackCounter) Observe(name string, v float64, _ ...metrics.Label) {
	switch name {
	case consumer.MetricAckSeconds:
		if r.acked.Add(1) >= r.n {
			r.once.Do(func() { close(r.done) })
		}
	case consumer.MetricCommitSeconds:
		r.commits.Add(1)
		r.commitNs.Add(int64(v * 1e9))
	}
}

// inboxReplica is one consumer process's share: its pool, its Store on the shared table.
type inboxReplica struct {
	pool  *pgxpool.Pool
	pc    *pgCounter
	store *pginbox.Store
}

func openReplicas(b *testing.B, db *benchDB, k int, conns int32) []*inboxReplica {
	b.Helper()
	rs := make([]*inboxReplica, k)
	for i := range rs {
		pool, pc := db.pool(b, conns)
		s, err := pginbox.Open(context.Background(), pool, pginbox.Options{Logger: slog.New(slog.DiscardHandler)})
		if err != nil {
			pool.Close()
			b.Fatal(err)
		}
		rs[i] = &inboxReplica{pool: pool, pc: pc, store: s}
	}
	return rs
}

func closeReplicas(rs []*inboxReplica) {
	for _, r := range rs {
		_ = r.store.Close()
		r.pool.Close()
	}
}

func counters(rs []*inboxReplica) []*pgCounter {
	var out []*pgCounter
	for _, r := range rs {
		out = append(out, r.pc)
	}
	return out
}

func kitConfig(url string, rec metrics.Recorder) consumer.Config {
	return consumer.Config{URLs: []string{url}, Metrics: rec, Logger: slog.New(slog.DiscardHandler)}
}

// inboxHandler inserts the message's ledger row through the inbox's transaction.
func inboxHandler(led *ledger.PG, m *measure) consumer.TxHandler[pgx.Tx] {
	return func(ctx context.Context, tx pgx.Tx, msg *consumer.Message) error {
		m.delivered()
		return led.Insert(ctx, tx, msg.Stamp)
	}
}

// drainInbox drains n messages from q with k competing consumer.Consumers, each on its own pool
// and pginbox.Store over the same table (as k replicas would), defaults otherwise (prefetch 2000,
// MaxBatch 500, one worker).
func drainInbox(b *testing.B, url string, db *benchDB, q string, k, n int) drainStats {
	b.Helper()
	rs := openReplicas(b, db, k, 2)
	defer closeReplicas(rs)
	rec := newAckCounter(n)
	m := startMeasure(n, counters(rs))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	errs := make(chan error, k)
	var cs []*consumer.Consumer[pgx.Tx]
	for _, r := range rs {
		cfg := kitConfig(url, rec)
		cfg.Queue, cfg.Topology = q, topology.Topology{Queues: []topology.Queue{{Name: q}}}
		c, err := consumer.NewWithStore(cfg, r.store)
		if err != nil {
			b.Fatal(err)
		}
		cs = append(cs, c)
		go pprof.Do(ctx, pprof.Labels("path", "inbox"), func(ctx context.Context) {
			errs <- c.RunTx(ctx, inboxHandler(db.led, m))
		})
	}
	select {
	case <-rec.done:
	case err := <-errs:
		b.Fatalf("inbox consumer: %v", err)
	}
	st := m.stop(rec.commits.Load(), rec.commitNs.Load())
	cancel()
	for _, c := range cs {
		if err := <-errs; err != nil {
			b.Fatalf("inbox consumer: %v", err)
		}
		_ = c.Close(context.Background())
	}
	return st
}

// series collects one path's drains over the rounds.
type series struct{ rate, cpu, pgCPU, rt, perBatch, txMs []float64 }

func (s *series) add(st drainStats) {
	s.rate = append(s.rate, st.rate)
	s.cpu = append(s.cpu, st.cpu)
	s.pgCPU = append(s.pgCPU, st.pgCPU)
	s.rt = append(s.rt, st.rt)
	s.perBatch = append(s.perBatch, st.perBatch)
	s.txMs = append(s.txMs, st.txMs)
}

func (s *series) report(b *testing.B, prefix string) {
	b.ReportMetric(median(s.rate), prefix+"_msg/s")
	b.ReportMetric(slices.Min(s.rate), prefix+"_msg/s_min")
	b.ReportMetric(slices.Max(s.rate), prefix+"_msg/s_max")
	b.ReportMetric(median(s.cpu), prefix+"_cpu_µs/msg")
	b.ReportMetric(median(s.pgCPU), prefix+"_pgcpu_µs/msg")
	b.ReportMetric(median(s.rt), prefix+"_roundtrips/msg")
	b.ReportMetric(median(s.perBatch), prefix+"_msgs/tx")
	b.ReportMetric(median(s.txMs), prefix+"_tx_ms")
}

func median(v []float64) float64 {
	v = slices.Clone(v)
	slices.Sort(v)
	if len(v)%2 == 0 {
		return (v[len(v)/2-1] + v[len(v)/2]) / 2
	}
	return v[len(v)/2]
}

// reportPair reports both series, the ratio of the medians and each round's own ratio.
func reportPair(b *testing.B, raw, kit *series, kitName string) {
	raw.report(b, "raw")
	kit.report(b, kitName)
	b.ReportMetric(median(kit.rate)/median(raw.rate), "ratio")
	ratios := make([]float64, len(raw.rate))
	for i := range ratios {
		ratios[i] = kit.rate[i] / raw.rate[i]
	}
	b.ReportMetric(median(ratios), "round_ratio_median")
	b.ReportMetric(slices.Min(ratios), "round_ratio_min")
	b.ReportMetric(slices.Max(ratios), "round_ratio_max")
}

func logRound(b *testing.B, r int, name string, st drainStats) {
	b.Logf("round %d %-5s %7.0f msg/s  cpu %5.1f µs/msg  pg backends %5.1f µs/msg  %.3f round trips/msg  %.0f msgs/tx  %.1f ms/tx",
		r, name, st.rate, st.cpu, st.pgCPU, st.rt, st.perBatch, st.txMs)
}

// BenchmarkInboxDrain: a classic queue pre-filled (not timed) with -rk.msgs stamped messages of
// 256 B over S streams round-robin, drained by the raw baseline (drainRaw) and by the inbox
// (drainInbox) with the same number of competing consumers, alternating (the first path of each
// round alternates too), -rk.rounds rounds. Reported per path: median msg/s (and the min and max
// of the rounds), CPU µs per message of this process and of the PostgreSQL backends it used,
// round trips per message and messages per transaction; the ratio of the medians and each round's
// own ratio. Every drain checks that the ledger holds each stamp exactly once.
func BenchmarkInboxDrain(b *testing.B) {
	for _, v := range []struct{ consumers, streams int }{
		{1, 16}, {2, 16}, {4, 16}, {1, 1}, {2, 1}, {4, 1}, {2, 10_000}, {4, 10_000},
	} {
		b.Run(fmt.Sprintf("consumers=%d/streams=%d", v.consumers, v.streams), func(b *testing.B) {
			url := testbroker.SharedURL(b)
			db := newBenchDB(b)
			q := testbroker.Name(b, "inbox-drain")
			testbroker.DeleteQueues(b, url, q, q+".parked")
			conn, err := amqp.Dial(url)
			if err != nil {
				b.Fatal(err)
			}
			defer conn.Close()
			declareClassic(b, conn, q)
			n := *drainMsgs
			queues := make([]string, v.consumers)
			for i := range queues {
				queues[i] = q
			}
			b.StopTimer()
			var raw, kit series
			for r := range max(*drainRounds, 1) {
				for j := range 2 {
					db.reset(b)
					publishStamps(b, conn, "", func(string) string { return q }, n, roundRobin(v.streams))
					if (r+j)%2 == 0 {
						st := drainRaw(b, url, db, queues, n)
						raw.add(st)
						logRound(b, r, "raw", st)
					} else {
						st := drainInbox(b, url, db, q, v.consumers, n)
						kit.add(st)
						logRound(b, r, "inbox", st)
					}
					if rows, distinct := db.ledgerRows(b); rows != int64(n) || distinct != int64(n) {
						b.Fatalf("ledger: %d rows, %d distinct stamps, want %d", rows, distinct, n)
					}
				}
			}
			reportPair(b, &raw, &kit, "inbox")
		})
	}
}

// balancedStreams returns perPart stream names for each of parts' partitions (stream k of
// partition p is result[p*perPart+k]), so that each partition gets the same traffic.
func balancedStreams(parts topology.Partitions, perPart int) []string {
	byPart := make([][]string, parts.Count)
	for i := 0; ; i++ {
		s := "s" + strconv.Itoa(i)
		p := parts.Of(s)
		if len(byPart[p]) < perPart {
			byPart[p] = append(byPart[p], s)
		}
		full := true
		for _, l := range byPart {
			full = full && len(l) == perPart
		}
		if full {
			break
		}
	}
	var out []string
	for _, l := range byPart {
		out = append(out, l...)
	}
	return out
}

// BenchmarkInboxGroup: topology.Partitions with Count 4 (16 streams, 4 per partition, -rk.msgs
// messages round-robin over them), drained by a consumer.Group on the inbox (pginbox.Store as the
// Leaser) with one member (all four partitions), or with two members in the process (each its
// own pool and Store, two partitions each: their leases are taken before they start, so there is
// no rebalancing during the drain), alternating with the raw baseline of one plain consumer per
// partition queue. Figures as BenchmarkInboxDrain's.
func BenchmarkInboxGroup(b *testing.B) {
	for _, members := range []int{1, 2} {
		b.Run(fmt.Sprintf("partitions=4/members=%d", members), func(b *testing.B) {
			url := testbroker.SharedURL(b)
			db := newBenchDB(b)
			parts := topology.Partitions{Exchange: testbroker.Name(b, "inbox-grp-x"), Queue: testbroker.Name(b, "inbox-grp-q"), Count: 4}
			var queues []string
			for i := range parts.Count {
				queues = append(queues, parts.QueueName(i), parts.QueueName(i)+".parked")
			}
			testbroker.DeleteQueues(b, url, queues...)
			testbroker.DeleteExchanges(b, url, parts.Exchange)
			queues = queues[:0]
			for i := range parts.Count {
				queues = append(queues, parts.QueueName(i))
			}
			conn, err := amqp.Dial(url)
			if err != nil {
				b.Fatal(err)
			}
			defer conn.Close()
			ch, err := conn.Channel()
			if err != nil {
				b.Fatal(err)
			}
			if err := parts.Topology().Declare(ch); err != nil {
				b.Fatal(err)
			}
			_ = ch.Close()
			streams := balancedStreams(parts, 4)
			stampOf := func(i int) (string, int64) { return streams[i%len(streams)], int64(i/len(streams) + 1) }
			n := *drainMsgs
			b.StopTimer()
			var raw, kit series
			for r := range max(*drainRounds, 1) {
				for j := range 2 {
					db.reset(b)
					publishStamps(b, conn, parts.Exchange, parts.RoutingKey, n, stampOf)
					if (r+j)%2 == 0 {
						st := drainRaw(b, url, db, queues, n)
						raw.add(st)
						logRound(b, r, "raw", st)
					} else {
						st := drainGroup(b, url, db, parts, members, n)
						kit.add(st)
						logRound(b, r, "group", st)
					}
					if rows, distinct := db.ledgerRows(b); rows != int64(n) || distinct != int64(n) {
						b.Fatalf("ledger: %d rows, %d distinct stamps, want %d", rows, distinct, n)
					}
				}
			}
			reportPair(b, &raw, &kit, "group")
		})
	}
}

func drainGroup(b *testing.B, url string, db *benchDB, parts topology.Partitions, members, n int) drainStats {
	b.Helper()
	const ttl = 10 * time.Second
	perMember := parts.Count / members
	rs := openReplicas(b, db, members, int32(perMember+2))
	defer closeReplicas(rs)
	ctx := context.Background()
	names := make([]string, members)
	for i := range names {
		names[i] = fmt.Sprintf("m%d", i)
	}
	if members > 1 { // take the leases first: no rebalancing while draining
		for i, r := range rs {
			if _, _, err := r.store.Renew(ctx, parts.Queue, names[i], parts.Count, ttl); err != nil {
				b.Fatal(err)
			}
		}
		for i, r := range rs {
			got, err := r.store.Acquire(ctx, parts.Queue, names[i], parts.Count, perMember, ttl)
			if err != nil || len(got) != perMember {
				b.Fatalf("acquire for %s: %v, %v", names[i], got, err)
			}
		}
	}
	rec := newAckCounter(n)
	m := startMeasure(n, counters(rs))
	gctx, cancel := context.WithCancel(ctx)
	defer cancel()
	errs := make(chan error, members)
	groups := make([]*consumer.Group[pgx.Tx], members)
	for i, r := range rs {
		g, err := consumer.NewGroup(consumer.GroupConfig{Config: kitConfig(url, rec), Partitions: parts, Leaser: r.store, Member: names[i], LeaseTTL: ttl}, r.store)
		if err != nil {
			b.Fatal(err)
		}
		groups[i] = g
		go pprof.Do(gctx, pprof.Labels("path", "group"), func(ctx context.Context) {
			errs <- g.RunTx(ctx, inboxHandler(db.led, m))
		})
	}
	select {
	case <-rec.done:
	case err := <-errs:
		b.Fatalf("group: %v", err)
	}
	st := m.stop(rec.commits.Load(), rec.commitNs.Load())
	var held []int
	for _, g := range groups {
		held = append(held, len(g.Held()))
	}
	cancel()
	for range groups {
		if err := <-errs; err != nil {
			b.Fatalf("group: %v", err)
		}
	}
	if want := slices.Repeat([]int{perMember}, members); !slices.Equal(held, want) {
		b.Fatalf("partitions held per member at the end: %v, want %v", held, want)
	}
	return st
}

// BenchmarkInboxStartup: -rk.startupstreams streams (100,000) with one message each committed
// through the store (batches of 1,000), then a fresh pool, Store and Consumer: the time to Open
// the store, to WaitReady (NewWithStore + RunTx) and to the first message; the live heap (after a
// GC) before, at the peak of the drain of -rk.startupmsgs messages (10,000, each on another of
// those streams, seq 2; sampled every 100 ms with a GC) and at its end; the table's bytes per
// stream (pg_total_relation_size / rows). The streams=0 case is the same consumer on an empty
// table (its 10,000 messages then create 10,000 rows), for comparison.
func BenchmarkInboxStartup(b *testing.B) {
	for _, streams := range []int{0, *startupStreams} {
		b.Run(fmt.Sprintf("streams=%d", streams), func(b *testing.B) {
			b.StopTimer()
			benchStartup(b, streams, *startupMsgs)
		})
	}
}

func benchStartup(b *testing.B, streams, msgs int) {
	url := testbroker.SharedURL(b)
	db := newBenchDB(b)
	ctx := context.Background()
	streamName := func(i int) string { return "orders#" + strconv.Itoa(i) }
	if streams > 0 {
		pool, _ := db.pool(b, 2)
		s, err := pginbox.Open(ctx, pool, pginbox.Options{Logger: slog.New(slog.DiscardHandler)})
		if err != nil {
			b.Fatal(err)
		}
		t0 := time.Now()
		const per = 1000
		for i := 0; i < streams; i += per {
			batch := &consumer.Batch[pgx.Tx]{Ops: make([]consumer.Op[pgx.Tx], 0, per)}
			for j := i; j < min(i+per, streams); j++ {
				st := protocol.Stamp{Source: "bench", Epoch: 1, Stream: streamName(j), Seq: 1}
				batch.Ops = append(batch.Ops, consumer.Op[pgx.Tx]{Key: dedup.KeyOf(st), Stamp: st, Mark: true})
			}
			if err := s.Commit(ctx, batch); err != nil {
				b.Fatal(err)
			}
		}
		b.Logf("%d streams committed in %v", streams, time.Since(t0).Round(time.Millisecond))
		_ = s.Close()
		var rows, total, heap int64
		if err := pool.QueryRow(ctx, `SELECT count(*), pg_total_relation_size('rabbitkit_inbox'), pg_relation_size('rabbitkit_inbox') FROM rabbitkit_inbox`).Scan(&rows, &total, &heap); err != nil {
			b.Fatal(err)
		}
		pool.Close()
		b.ReportMetric(float64(total)/float64(rows), "table_B/stream")
		b.ReportMetric(float64(heap)/float64(rows), "relheap_B/stream")
		b.ReportMetric(float64(total)/(1<<20), "table_MiB")
	}
	q := testbroker.Name(b, "inbox-startup")
	testbroker.DeleteQueues(b, url, q, q+".parked")
	conn, err := amqp.Dial(url)
	if err != nil {
		b.Fatal(err)
	}
	defer conn.Close()
	declareClassic(b, conn, q)
	spread := max(streams/msgs, 1)
	seq := int64(1)
	if streams > 0 {
		seq = 2
	}
	publishStamps(b, conn, "", func(string) string { return q }, msgs, func(i int) (string, int64) { return streamName(i * spread), seq })

	liveHeap := func() uint64 {
		var ms runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&ms)
		return ms.HeapAlloc
	}
	heap0 := liveHeap()
	t0 := time.Now()
	pool, pc := db.pool(b, 2)
	defer pool.Close()
	s, err := pginbox.Open(ctx, pool, pginbox.Options{Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	opened := time.Since(t0)
	rec := newAckCounter(msgs)
	m := startMeasure(msgs, []*pgCounter{pc})
	cfg := kitConfig(url, rec)
	cfg.Queue, cfg.Topology = q, topology.Topology{Queues: []topology.Queue{{Name: q}}}
	c, err := consumer.NewWithStore(cfg, s)
	if err != nil {
		b.Fatal(err)
	}
	rctx, cancel := context.WithCancel(ctx)
	defer cancel()
	errs := make(chan error, 1)
	go func() { errs <- c.RunTx(rctx, inboxHandler(db.led, m)) }()
	wctx, wcancel := context.WithTimeout(ctx, time.Minute)
	defer wcancel()
	if err := c.WaitReady(wctx); err != nil {
		b.Fatal(err)
	}
	ready := time.Since(t0)
	var peak uint64
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
wait:
	for {
		select {
		case <-rec.done:
			break wait
		case err := <-errs:
			b.Fatalf("consumer: %v", err)
		case <-tick.C:
			peak = max(peak, liveHeap())
		}
	}
	st := m.stop(rec.commits.Load(), rec.commitNs.Load())
	first := m.first.Load().Sub(t0)
	heapEnd := liveHeap()
	peak = max(peak, heapEnd)
	cancel()
	if err := <-errs; err != nil {
		b.Fatal(err)
	}
	_ = c.Close(ctx)
	b.Logf("open %v, ready %v, first message %v; heap before %.2f MiB, peak %.2f MiB, end %.2f MiB; drain %.0f msg/s, %.2f round trips/msg",
		opened.Round(time.Microsecond), ready.Round(time.Microsecond), first.Round(time.Microsecond),
		float64(heap0)/(1<<20), float64(peak)/(1<<20), float64(heapEnd)/(1<<20), st.rate, st.rt)
	b.ReportMetric(float64(opened)/float64(time.Millisecond), "open_ms")
	b.ReportMetric(float64(ready)/float64(time.Millisecond), "ready_ms")
	b.ReportMetric(float64(first)/float64(time.Millisecond), "first_msg_ms")
	b.ReportMetric(float64(heap0)/(1<<20), "heap_before_MiB")
	b.ReportMetric(float64(peak)/(1<<20), "heap_peak_MiB")
	b.ReportMetric(float64(heapEnd)/(1<<20), "heap_end_MiB")
	b.ReportMetric((float64(peak)-float64(heap0))/(1<<20), "heap_consumer_MiB")
	b.ReportMetric(st.rate, "drain_msg/s")
	b.ReportMetric(st.rt, "roundtrips/msg")
	if rows, distinct := db.ledgerRows(b); rows != int64(msgs) || distinct != int64(msgs) {
		b.Fatalf("ledger: %d rows, %d distinct stamps, want %d", rows, distinct, msgs)
	}
}
