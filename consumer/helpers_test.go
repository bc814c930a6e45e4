package consumer_test

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/cenkalti/backoff/v4"
	amqp "github.com/rabbitmq/amqp091-go"
	"github.com/stretchr/testify/require"
	bolt "go.etcd.io/bbolt"
	"go.uber.org/goleak"

	"github.com/rabbitkit/rabbitkit/consumer"
	"github.com/rabbitkit/rabbitkit/internal/testbroker"
	"github.com/rabbitkit/rabbitkit/metrics"
	"github.com/rabbitkit/rabbitkit/protocol"
	"github.com/rabbitkit/rabbitkit/topology"
)

func TestMain(m *testing.M) {
	if os.Getenv(childEnv) != "" {
		os.Exit(crashChild())
	}
	goleak.VerifyTestMain(m, testbroker.IgnoreProxyLeaks()...)
}

func quietLogger() *slog.Logger {
	if os.Getenv("RABBITKIT_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

// fixture is a queue on a broker plus a consumer config pointing at it.
type fixture struct {
	t      *testing.T
	url    string // where the test publishes and inspects
	queue  string
	parked string
	path   string // bbolt file
	mem    *metrics.Memory
}

func newFixture(t *testing.T, url string) *fixture {
	t.Helper()
	q := testbroker.Name(t, "cons")
	f := &fixture{t: t, url: url, queue: q, parked: q + ".parked", path: filepath.Join(t.TempDir(), "consumer.db"), mem: &metrics.Memory{}}
	testbroker.DeleteQueues(t, url, f.queue, f.parked)
	ch := f.channel()
	_, err := ch.QueueDeclare(q, true, false, false, false, amqp.Table{amqp.QueueTypeArg: "classic"})
	require.NoError(t, err)
	return f
}

func (f *fixture) config(urls ...string) consumer.Config {
	if len(urls) == 0 {
		urls = []string{f.url}
	}
	return consumer.Config{
		URLs:         urls,
		Queue:        f.queue,
		Topology:     topology.Topology{Queues: []topology.Queue{{Name: f.queue}}},
		StorePath:    f.path,
		Logger:       quietLogger(),
		Metrics:      f.mem,
		RetryBackoff: func() backoff.BackOff { return backoff.NewConstantBackOff(10 * time.Millisecond) },
	}
}

// channel opens a plain amqp091-go channel on the fixture's broker, closed at cleanup.
func (f *fixture) channel() *amqp.Channel {
	f.t.Helper()
	conn, err := amqp.Dial(f.url)
	require.NoError(f.t, err)
	f.t.Cleanup(func() { _ = conn.Close() })
	ch, err := conn.Channel()
	require.NoError(f.t, err)
	require.NoError(f.t, ch.Confirm(false))
	return ch
}

// publish sends raw messages to the queue with a plain client and waits for their confirms.
func (f *fixture) publish(ch *amqp.Channel, msgs ...amqp.Publishing) {
	f.t.Helper()
	var dcs []*amqp.DeferredConfirmation
	for _, m := range msgs {
		m.DeliveryMode = amqp.Persistent
		dc, err := ch.PublishWithDeferredConfirm("", f.queue, false, false, m)
		require.NoError(f.t, err)
		dcs = append(dcs, dc)
	}
	for _, dc := range dcs {
		require.True(f.t, dc.Wait(), "publish not confirmed")
	}
}

// stamped is a message as a rabbitkit publisher sends it: the v2 stamp as message-id.
func stamped(source, stream string, epoch, seq int64, body string) amqp.Publishing {
	s := protocol.Stamp{Source: source, Epoch: epoch, Stream: stream, Seq: seq}
	return amqp.Publishing{MessageId: s.String(), Body: []byte(body)}
}

// stampedV1 is a message stamped in the legacy v1 form (four rk- headers).
func stampedV1(source, stream string, epoch, seq int64, body string) amqp.Publishing {
	s := protocol.Stamp{Source: source, Epoch: epoch, Stream: stream, Seq: seq}
	return amqp.Publishing{Headers: s.ApplyV1(nil), Body: []byte(body)}
}

// messages returns the ready message count of a queue, -1 when it does not exist. ch only names
// the connection: the check runs on a channel of its own (a 404 closes the channel).
func (f *fixture) messages(ch *amqp.Channel, queue string) int {
	f.t.Helper()
	_ = ch
	conn, err := amqp.Dial(f.url)
	require.NoError(f.t, err)
	defer conn.Close()
	c, err := conn.Channel()
	require.NoError(f.t, err)
	q, err := c.QueueDeclarePassive(queue, true, false, false, false, nil)
	var ae *amqp.Error
	if errors.As(err, &ae) && ae.Code == amqp.NotFound {
		return -1
	}
	require.NoError(f.t, err)
	return q.Messages
}

// running starts Run/RunTx in the background; stop ends it and returns its error.
type running struct {
	cancel context.CancelFunc
	done   chan struct{} // closed when Run returned
	err    error
}

func (r *running) stop(t *testing.T) {
	t.Helper()
	r.cancel()
	select {
	case <-r.done:
		require.NoError(t, r.err)
	case <-time.After(60 * time.Second):
		t.Fatal("Run did not return after its context ended")
	}
}

func start(t *testing.T, c *consumer.Consumer[*bolt.Tx], h consumer.Handler, th consumer.TxHandler[*bolt.Tx]) *running {
	ctx, cancel := context.WithCancel(context.Background())
	r := &running{cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(r.done)
		if th != nil {
			r.err = c.RunTx(ctx, th)
		} else {
			r.err = c.Run(ctx, h)
		}
	}()
	t.Cleanup(func() {
		cancel()
		select {
		case <-r.done:
		case <-time.After(60 * time.Second):
		}
		_ = c.Close(context.Background())
	})
	return r
}

var effectsBucket = []byte("effects")

// countEffect is a TxHandler body: effects[messageKey]++ in the dedup transaction.
func countEffect(tx *bolt.Tx, m *consumer.Message) error { return incrEffect(tx, effectKey(m)) }

// incrEffect adds one to the effect count of key in tx.
func incrEffect(tx *bolt.Tx, key string) error {
	b, err := tx.CreateBucketIfNotExists(effectsBucket)
	if err != nil {
		return err
	}
	k := []byte(key)
	var n uint64
	if v := b.Get(k); v != nil {
		n = binary.BigEndian.Uint64(v)
	}
	return b.Put(k, binary.BigEndian.AppendUint64(nil, n+1))
}

func effectKey(m *consumer.Message) string {
	if m.Stamped {
		return m.Stamp.String()
	}
	return "unstamped/" + string(m.Body)
}

// effects reads every effect count from a bbolt file opened by the test.
func effects(t *testing.T, db *bolt.DB) map[string]uint64 {
	t.Helper()
	var out map[string]uint64
	require.NoError(t, db.View(func(tx *bolt.Tx) (err error) { out, err = readEffects(tx); return err }))
	return out
}

// viewer is a Consumer[*bbolt.Tx] or a BoltStore: what a test reads effects through while the
// store is open.
type viewer interface {
	View(ctx context.Context, fn func(tx *bolt.Tx) error) error
}

// effectsOf reads every effect count through the consumer's (or store's) View.
func effectsOf(t *testing.T, v viewer) map[string]uint64 {
	t.Helper()
	var out map[string]uint64
	require.NoError(t, v.View(context.Background(), func(tx *bolt.Tx) (err error) { out, err = readEffects(tx); return err }))
	return out
}

func readEffects(tx *bolt.Tx) (map[string]uint64, error) {
	out := map[string]uint64{}
	b := tx.Bucket(effectsBucket)
	if b == nil {
		return out, nil
	}
	err := b.ForEach(func(k, v []byte) error {
		out[string(k)] = binary.BigEndian.Uint64(v)
		return nil
	})
	return out, err
}

// counter counts plain-handler effects per message.
type counter struct {
	mu sync.Mutex
	n  map[string]int
}

func (c *counter) add(m *consumer.Message) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.n == nil {
		c.n = map[string]int{}
	}
	c.n[effectKey(m)]++
}

func (c *counter) snapshot() map[string]int {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make(map[string]int, len(c.n))
	for k, v := range c.n {
		out[k] = v
	}
	return out
}

func key(source, stream string, epoch, seq int64) string {
	return protocol.Stamp{Source: source, Epoch: epoch, Stream: stream, Seq: seq}.String()
}

// requireExactlyOnce checks that every expected key has exactly one effect and nothing else has any.
func requireExactlyOnce[N int | uint64](t *testing.T, got map[string]N, want []string) {
	t.Helper()
	for _, k := range want {
		require.Equal(t, N(1), got[k], "effect count of %s", k)
	}
	require.Len(t, got, len(want), "unexpected effects: %v", got)
}

func seqKeys(source, stream string, epoch int64, from, to int64) []string {
	var out []string
	for s := from; s <= to; s++ {
		out = append(out, key(source, stream, epoch, s))
	}
	return out
}

var _ = fmt.Sprint

func binaryKey(n uint64) []byte { return binary.BigEndian.AppendUint64(nil, n) }
func beUint(b []byte) uint64    { return binary.BigEndian.Uint64(b) }
