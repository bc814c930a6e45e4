package integration

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cenkalti/backoff/v4"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	amqp "github.com/rabbitmq/amqp091-go"
	bolt "go.etcd.io/bbolt"

	"github.com/rabbitkit/rabbitkit/consumer"
	"github.com/rabbitkit/rabbitkit/consumer/pginbox"
	"github.com/rabbitkit/rabbitkit/internal/pgtest"
	"github.com/rabbitkit/rabbitkit/internal/testbroker"
	"github.com/rabbitkit/rabbitkit/metrics"
	"github.com/rabbitkit/rabbitkit/protocol"
	"github.com/rabbitkit/rabbitkit/topology"
)

// TestParkedRedriveAppliesOnce walks the operator's path for a message whose handler failed for
// good: the consumer parks it after MaxAttempts and accounts for its stamp (a resend is a
// duplicate, and no gap is reported); the cause is fixed; `rabbitkit parked redrive` (the binary)
// publishes the parked copy back with its stamp unchanged, twice, as a re-drive interrupted after
// its publish would; the consumer applies it exactly once, out of order but never lost, and a
// later re-drive of the same stamp, after a restart, is a duplicate. Before the parked set
// existed, the re-driven copy was dropped as a duplicate and the message was never applied.
//
// Three consumers: a RunTx handler on the bbolt store, a plain Run handler on it (the re-drive is
// decided from the window before the handler runs), and a RunTx handler on the PostgreSQL inbox
// (decided inside its transaction, against the locked row).
func TestParkedRedriveAppliesOnce(t *testing.T) {
	url := testbroker.SharedURL(t)
	bin := binaries(t)
	for _, kind := range []string{"bolt-tx", "bolt-plain", "pg-tx"} {
		t.Run(kind, func(t *testing.T) {
			q := testbroker.Name(t, "redrive-"+kind)
			testbroker.DeleteQueues(t, url, q, q+".parked")
			rc := &redriveConsumer{t: t, url: url, queue: q, kind: kind, path: filepath.Join(t.TempDir(), "consumer.db")}
			rc.broken.Store(true)
			if kind == "pg-tx" {
				rc.pool = pgtest.Pool(t)
			}
			stamp := func(seq int64) protocol.Stamp {
				return protocol.Stamp{Source: "orders-api", Epoch: 7, Stream: "s", Seq: seq}
			}
			pub := rawPublisher(t, url, q)

			// 1. seq 2's handler fails while "broken": parked after 2 attempts, accounted for.
			rc.start()
			pub(stamp(1), stamp(2), stamp(3))
			rc.waitMetric(consumer.MetricParked, 1)
			rc.waitApplied(stamp(1), stamp(3))

			// 2. The cause is fixed. A publisher's resend of seq 2 is still a duplicate.
			rc.broken.Store(false)
			pub(stamp(2))
			rc.waitMetric(consumer.MetricDuplicates, 1)
			if n := rc.applied(stamp(2)); n != 0 {
				t.Fatalf("a resend of a parked stamp was applied (%d): only a re-drive may apply it", n)
			}

			// 3. The operator re-drives it; a second copy of the parked message re-driven too.
			copyParked(t, url, q+".parked")
			out := runCLI(t, bin, "parked", "redrive", q, "-url", url, "all")
			if !strings.Contains(out, "re-driven 2") {
				t.Fatalf("rabbitkit parked redrive: %s", out)
			}
			rc.waitMetric(consumer.MetricRedriven, 1)
			rc.waitMetric(consumer.MetricDuplicates, 2)
			for _, s := range []protocol.Stamp{stamp(1), stamp(2), stamp(3)} {
				if n := rc.applied(s); n != 1 {
					t.Fatalf("%s applied %d times, want 1", s, n)
				}
			}
			if !rc.redriven.Load() {
				t.Fatal("the handler was not told the message was re-driven (Message.Redriven)")
			}

			// 4. Restarted, the consumer still knows the stamp was re-applied: another re-drive of
			// it is a duplicate.
			rc.stop()
			rc.start()
			redriveCopy(t, url, q, stamp(2))
			rc.waitMetric(consumer.MetricDuplicates, 1) // a fresh Memory per start
			time.Sleep(300 * time.Millisecond)
			if n := rc.applied(stamp(2)); n != 1 {
				t.Fatalf("after a restart, a re-drive applied seq 2 again (%d times)", n)
			}
			if g := rc.mem.Get(consumer.MetricRedriven); g != 0 {
				t.Fatalf("redriven_total %v after the restart, want 0", g)
			}
			rc.stop()
		})
	}
}

// redriveConsumer is one of the test's consumers, restartable on the same store.
type redriveConsumer struct {
	t                *testing.T
	url, queue, kind string
	path             string // bbolt file
	pool             *pgxpool.Pool
	broken, redriven atomic.Bool
	mem              *metrics.Memory
	mu               sync.Mutex
	plainApplied     map[protocol.Stamp]int // bolt-plain's effects (the test process outlives each start)
	cancel           context.CancelFunc
	done             chan error
	close            func()
	view             func(protocol.Stamp) int
}

// handle is every variant's handler logic: seq 2 fails while broken.
func (rc *redriveConsumer) handle(m *consumer.Message) error {
	if m.Stamp.Seq == 2 && rc.broken.Load() {
		return errors.New("ledger refused order 2")
	}
	if m.Redriven {
		rc.redriven.Store(true)
	}
	return nil
}

func (rc *redriveConsumer) start() {
	t := rc.t
	rc.mem = &metrics.Memory{}
	cfg := consumer.Config{
		URLs:         []string{rc.url},
		Queue:        rc.queue,
		Topology:     topology.Topology{Queues: []topology.Queue{{Name: rc.queue}}},
		StorePath:    rc.path,
		Logger:       slog.New(slog.NewTextHandler(io.Discard, nil)),
		Metrics:      rc.mem,
		MaxAttempts:  2,
		RetryBackoff: func() backoff.BackOff { return backoff.NewConstantBackOff(20 * time.Millisecond) },
	}
	ctx, cancel := context.WithCancel(context.Background())
	rc.cancel, rc.done = cancel, make(chan error, 1)
	switch rc.kind {
	case "bolt-plain":
		c, err := consumer.New(cfg)
		if err != nil {
			t.Fatal(err)
		}
		rc.close = func() { _ = c.Close(context.Background()) }
		rc.view = func(s protocol.Stamp) int {
			rc.mu.Lock()
			defer rc.mu.Unlock()
			return rc.plainApplied[s]
		}
		go func() {
			rc.done <- c.Run(ctx, func(_ context.Context, m *consumer.Message) error {
				if err := rc.handle(m); err != nil {
					return err
				}
				rc.mu.Lock()
				defer rc.mu.Unlock()
				if rc.plainApplied == nil {
					rc.plainApplied = map[protocol.Stamp]int{}
				}
				rc.plainApplied[m.Stamp]++
				return nil
			})
		}()
	case "bolt-tx":
		c, err := consumer.New(cfg)
		if err != nil {
			t.Fatal(err)
		}
		rc.close = func() { _ = c.Close(context.Background()) }
		rc.view = func(s protocol.Stamp) int {
			n := 0
			if err := c.View(context.Background(), func(tx *bolt.Tx) error {
				if b := tx.Bucket([]byte("effects")); b != nil {
					if v := b.Get([]byte(s.String())); v != nil {
						n = int(v[0])
					}
				}
				return nil
			}); err != nil {
				t.Errorf("view: %v", err)
			}
			return n
		}
		go func() {
			rc.done <- c.RunTx(ctx, func(_ context.Context, tx *bolt.Tx, m *consumer.Message) error {
				if err := rc.handle(m); err != nil {
					return err
				}
				b, err := tx.CreateBucketIfNotExists([]byte("effects"))
				if err != nil {
					return err
				}
				k := []byte(m.Stamp.String())
				var n byte
				if v := b.Get(k); v != nil {
					n = v[0]
				}
				return b.Put(k, []byte{n + 1})
			})
		}()
	case "pg-tx":
		if _, err := rc.pool.Exec(ctx, `CREATE TABLE IF NOT EXISTS effects (stamp text PRIMARY KEY, n int NOT NULL)`); err != nil {
			t.Fatal(err)
		}
		store, err := pginbox.Open(ctx, rc.pool, pginbox.Options{})
		if err != nil {
			t.Fatal(err)
		}
		cfg.StorePath = ""
		c, err := consumer.NewWithStore[pgx.Tx](cfg, store)
		if err != nil {
			t.Fatal(err)
		}
		rc.close = func() { _ = c.Close(context.Background()) }
		rc.view = func(s protocol.Stamp) int {
			var n int
			err := rc.pool.QueryRow(context.Background(), `SELECT n FROM effects WHERE stamp = $1`, s.String()).Scan(&n)
			if err != nil && !errors.Is(err, pgx.ErrNoRows) {
				t.Errorf("view: %v", err)
			}
			return n
		}
		go func() {
			rc.done <- c.RunTx(ctx, func(ctx context.Context, tx pgx.Tx, m *consumer.Message) error {
				if err := rc.handle(m); err != nil {
					return err
				}
				_, err := tx.Exec(ctx, `INSERT INTO effects VALUES ($1, 1) ON CONFLICT (stamp) DO UPDATE SET n = effects.n + 1`, m.Stamp.String())
				return err
			})
		}()
	}
}

func (rc *redriveConsumer) stop() {
	rc.t.Helper()
	rc.cancel()
	select {
	case err := <-rc.done:
		if err != nil && !errors.Is(err, context.Canceled) {
			rc.t.Fatalf("consumer: %v", err)
		}
	case <-time.After(30 * time.Second):
		rc.t.Fatal("consumer did not stop")
	}
	rc.close()
}

func (rc *redriveConsumer) applied(s protocol.Stamp) int { return rc.view(s) }

func (rc *redriveConsumer) waitMetric(name string, want float64) {
	rc.t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for rc.mem.Get(name) < want {
		if time.Now().After(deadline) {
			rc.t.Fatalf("%s = %v, want %v", name, rc.mem.Get(name), want)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if got := rc.mem.Get(name); got != want {
		rc.t.Fatalf("%s = %v, want %v", name, got, want)
	}
}

func (rc *redriveConsumer) waitApplied(stamps ...protocol.Stamp) {
	rc.t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for _, s := range stamps {
		for rc.applied(s) < 1 {
			if time.Now().After(deadline) {
				rc.t.Fatalf("%s not applied", s)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
}

// rawPublisher returns a function that publishes stamped messages to q (as a rabbitkit publisher
// stamps them) and waits for their confirms.
func rawPublisher(t *testing.T, url, q string) func(...protocol.Stamp) {
	ch := confirmChannel(t, url)
	if _, err := ch.QueueDeclare(q, true, false, false, false, nil); err != nil {
		t.Fatal(err)
	}
	return func(stamps ...protocol.Stamp) {
		t.Helper()
		for _, s := range stamps {
			publishConfirmed(t, ch, q, amqp.Publishing{MessageId: s.String(), Body: fmt.Appendf(nil, `{"order":%d}`, s.Seq)})
		}
	}
}

// confirmChannel opens a connection to url (closed at cleanup) and a channel in confirm mode.
func confirmChannel(t *testing.T, url string) *amqp.Channel {
	t.Helper()
	conn, err := amqp.Dial(url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	ch, err := conn.Channel()
	if err == nil {
		err = ch.Confirm(false)
	}
	if err != nil {
		t.Fatal(err)
	}
	return ch
}

// publishConfirmed publishes m to the default exchange's route key and waits for the confirm.
func publishConfirmed(t *testing.T, ch *amqp.Channel, key string, m amqp.Publishing) {
	t.Helper()
	m.DeliveryMode = amqp.Persistent
	dc, err := ch.PublishWithDeferredConfirmWithContext(context.Background(), "", key, true, false, m)
	if err != nil {
		t.Fatal(err)
	}
	if ok, err := dc.WaitContext(context.Background()); err != nil || !ok {
		t.Fatalf("publish to %s not confirmed: %v %v", key, ok, err)
	}
}

// copyParked publishes a second copy of the (one) message in the parking queue, as a re-drive
// that crashed between its publish and its ack would leave behind.
func copyParked(t *testing.T, url, parking string) {
	t.Helper()
	ch := confirmChannel(t, url)
	d, ok, err := ch.Get(parking, false)
	if err != nil || !ok {
		t.Fatalf("parking queue %s: got %v, %v", parking, ok, err)
	}
	publishConfirmed(t, ch, parking, amqp.Publishing{Headers: d.Headers, MessageId: d.MessageId, Body: d.Body})
	if err := ch.Nack(d.DeliveryTag, false, true); err != nil {
		t.Fatal(err)
	}
}

// redriveCopy publishes what a re-drive of s publishes, straight to q.
func redriveCopy(t *testing.T, url, q string, s protocol.Stamp) {
	t.Helper()
	publishConfirmed(t, confirmChannel(t, url), q, amqp.Publishing{
		Headers: amqp.Table{protocol.HeaderRedrive: "test"}, MessageId: s.String(), Body: []byte("again"),
	})
}

// runCLI runs the rabbitkit binary and returns its combined output; it must succeed.
func runCLI(t *testing.T, bin string, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, filepath.Join(bin, "rabbitkit"), args...).CombinedOutput()
	if err != nil {
		t.Fatalf("rabbitkit %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}
