package consumer

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cenkalti/backoff/v4"
	amqp "github.com/rabbitmq/amqp091-go"
	"github.com/stretchr/testify/require"
	bolt "go.etcd.io/bbolt"

	"github.com/rabbitkit/rabbitkit/internal/amqpseam/amqpfake"
	"github.com/rabbitkit/rabbitkit/metrics"
	"github.com/rabbitkit/rabbitkit/protocol"
)

// The session's decisions on what the broker says, unit-tested on the shared AMQP fake
// (internal/amqpseam/amqpfake): the test plays the broker, delivering and reading acks. No
// broker is needed: these run under `make unit`.

// fakeCluster is a Consumer running on two fake brokers: d for the consuming connection, pd for
// the parking one.
type fakeCluster struct {
	t      *testing.T
	d, pd  *amqpfake.Dialer
	c      *Consumer[*bolt.Tx]
	mem    *metrics.Memory
	cancel context.CancelFunc
	errc   chan error
	parked chan Parked
}

func startFake(t *testing.T, h Handler, tweak func(*Config)) *fakeCluster {
	t.Helper()
	f := &fakeCluster{t: t, d: amqpfake.New(), pd: amqpfake.New(), mem: &metrics.Memory{}, errc: make(chan error, 1), parked: make(chan Parked, 16)}
	cfg := Config{
		URLs: []string{"amqp://guest:guest@fake:5672/"}, Queue: "q",
		StorePath: filepath.Join(t.TempDir(), "store.db"),
		Logger:    slog.New(slog.NewTextHandler(io.Discard, nil)), Metrics: f.mem,
		RetryBackoff: func() backoff.BackOff { return &backoff.ZeroBackOff{} },
		OnParked:     func(p Parked) { f.parked <- p },
		dial:         f.d, dialParking: f.pd,
	}
	if tweak != nil {
		tweak(&cfg)
	}
	c, err := New(cfg)
	require.NoError(t, err)
	f.c = c
	ctx, cancel := context.WithCancel(context.Background())
	f.cancel = cancel
	go func() { f.errc <- c.Run(ctx, h) }()
	t.Cleanup(func() {
		cancel()
		select {
		case <-f.errc:
		case <-time.After(10 * time.Second):
			t.Error("Run did not return")
		}
		_ = c.Close(context.Background())
	})
	return f
}

// stop ends Run (its context) and returns its error.
func (f *fakeCluster) stop() error {
	f.t.Helper()
	f.cancel()
	select {
	case err := <-f.errc:
		f.errc <- err // for Cleanup
		return err
	case <-time.After(10 * time.Second):
		f.t.Fatal("Run did not return")
		return nil
	}
}

// fakeDelivery is the delivery of seq on stream s of source "src", epoch 1.
func fakeDelivery(t *testing.T, stream string, seq int64, redelivered bool) amqp.Delivery {
	t.Helper()
	id, err := protocol.Stamp{Source: "src", Epoch: 1, Stream: stream, Seq: seq}.MessageID()
	require.NoError(t, err)
	return amqp.Delivery{MessageId: id, Body: []byte(fmt.Sprintf("%s-%d", stream, seq)), Redelivered: redelivered, Exchange: "x", RoutingKey: stream}
}

// ackedUpTo reads ch's acks until one covers tag exactly (an ack past tag acks deliveries not
// finished, or not even received).
func ackedUpTo(t *testing.T, ch *amqpfake.Channel, tag uint64) {
	t.Helper()
	for {
		s := ch.NextSettle(t, 5*time.Second)
		require.True(t, s.Ack, "unexpected nack %+v", s)
		require.LessOrEqual(t, s.Tag, tag, "acked past %d: %+v", tag, s)
		if s.Tag == tag {
			require.True(t, s.Multiple || tag == 1, "ack %+v does not cover every tag up to %d", s, tag)
			return
		}
	}
}

func noSettle(t *testing.T, ch *amqpfake.Channel, d time.Duration) {
	t.Helper()
	select {
	case s := <-ch.Settles():
		t.Fatalf("unexpected ack or nack %+v", s)
	case <-time.After(d):
	}
}

// gate holds a handler until released. A test defers release: its cleanup waits for Run, which
// cannot return while a handler is held.
type gate struct {
	held, open chan struct{}
	once       sync.Once
}

func newGate() *gate { return &gate{held: make(chan struct{}), open: make(chan struct{})} }

// hold, in the handler, says it is held and waits for release.
func (g *gate) hold() {
	close(g.held)
	<-g.open
}

func (g *gate) release() { g.once.Do(func() { close(g.open) }) }

// calls counts handler calls by body.
type calls struct {
	mu sync.Mutex
	n  map[string]int
}

func (c *calls) add(m *Message) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.n == nil {
		c.n = map[string]int{}
	}
	c.n[string(m.Body)]++
}

func (c *calls) get() map[string]int {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := map[string]int{}
	for k, v := range c.n {
		out[k] = v
	}
	return out
}

func TestFakeSessionSetUp(t *testing.T) {
	f := startFake(t, func(context.Context, *Message) error { return nil }, func(c *Config) { c.Prefetch = 7 })
	ch := f.d.NextConn(t).NextConsumer(t)
	tag, exclusive, _ := ch.Consumer()
	require.True(t, exclusive, "an exclusive (bbolt) store consumes exclusively")
	require.Equal(t, 7, ch.Prefetch())
	var queues []string
	for _, q := range ch.Declared().Queues {
		queues = append(queues, q.Name)
	}
	require.Contains(t, queues, "q.parked", "the parking queue is declared")
	require.NoError(t, f.c.WaitReady(context.Background()))
	require.NoError(t, f.stop())
	_, _, cancelled := ch.Consumer()
	require.True(t, cancelled, "drain cancels consumer %s", tag)
}

// A queue with a consumer already refuses an exclusive store's consumer: ErrQueueInUse, in Status.
func TestFakeQueueInUse(t *testing.T) {
	f := startFake(t, func(context.Context, *Message) error { return nil }, func(c *Config) { c.dial.(*amqpfake.Dialer).SetQueue("q", 0, 1) })
	conn := f.d.NextConn(t)
	conn.NextChan(t)
	require.Eventually(t, func() bool { return errors.Is(f.c.Status().LastError, ErrQueueInUse) }, 5*time.Second, time.Millisecond)
	require.Eventually(t, conn.IsClosed, 5*time.Second, time.Millisecond, "the refused connection is closed")
	f.d.SetQueue("q", 0, 0)
	ch := f.d.NextConn(t).NextConsumer(t)
	ch.Deliver(fakeDelivery(t, "s", 1, false))
	ackedUpTo(t, ch, 1)
	require.NoError(t, f.c.WaitReady(context.Background()))
	require.NoError(t, f.stop())
}

// Ack generations: a delivery finished after its channel died is not acked on the new channel
// (its tag means another message there); queued deliveries of the old channel are dropped
// unhandled; the redelivered copy of a message handled before the loss is dropped as a duplicate
// and acked; the rest is handled once.
func TestFakeAckGenerations(t *testing.T) {
	var got calls
	g := newGate()
	defer g.release()
	f := startFake(t, func(_ context.Context, m *Message) error {
		got.add(m)
		if string(m.Body) == "s-3" && !m.Redelivered {
			g.hold()
		}
		return nil
	}, nil)
	conn := f.d.NextConn(t)
	ch := conn.NextConsumer(t)
	ch.Deliver(fakeDelivery(t, "s", 1, false))
	ch.Deliver(fakeDelivery(t, "s", 2, false))
	ackedUpTo(t, ch, 2)
	ch.Deliver(fakeDelivery(t, "s", 3, false))
	ch.Deliver(fakeDelivery(t, "s", 4, false))
	<-g.held // s-3 is in its handler, s-4 behind it
	conn.Fail(&amqp.Error{Code: amqp.ConnectionForced, Reason: "CONNECTION_FORCED - broker forced connection closure"})
	ch2 := f.d.NextConn(t).NextConsumer(t)
	g.release()
	noSettle(t, ch2, 300*time.Millisecond) // s-3's old tag 3 must not be acked here
	require.Equal(t, map[string]int{"s-1": 1, "s-2": 1, "s-3": 1}, got.get(), "s-4 of the old channel is not handled")

	ch2.Deliver(fakeDelivery(t, "s", 3, true))
	ch2.Deliver(fakeDelivery(t, "s", 4, true))
	ackedUpTo(t, ch2, 2)
	require.Equal(t, map[string]int{"s-1": 1, "s-2": 1, "s-3": 1, "s-4": 1}, got.get())
	require.Equal(t, 2.0, f.mem.Get(MetricRedeliveries))
	require.Equal(t, 1.0, f.mem.Get(MetricDuplicates), "s-3, handled before the loss")
	require.Equal(t, 1.0, f.mem.Get(MetricReconnects))
	require.NoError(t, f.stop())
}

// Drain: the consumer is cancelled first, the handler running finishes and is acked before Run
// returns nil; what was received but not started stays unacked (the broker redelivers it).
func TestFakeDrain(t *testing.T) {
	var got calls
	g := newGate()
	defer g.release()
	f := startFake(t, func(_ context.Context, m *Message) error {
		got.add(m)
		if string(m.Body) == "s-2" {
			g.hold()
		}
		return nil
	}, nil)
	conn := f.d.NextConn(t)
	ch := conn.NextConsumer(t)
	ch.Deliver(fakeDelivery(t, "s", 1, false))
	ackedUpTo(t, ch, 1)
	ch.Deliver(fakeDelivery(t, "s", 2, false))
	<-g.held
	ch.Deliver(fakeDelivery(t, "s", 3, false))
	f.cancel()
	require.Eventually(t, func() bool { _, _, c := ch.Consumer(); return c }, 5*time.Second, time.Millisecond, "basic.cancel first")
	select {
	case err := <-f.errc:
		t.Fatalf("Run returned %v with a handler running", err)
	case <-time.After(100 * time.Millisecond):
	}
	g.release()
	s := ch.NextSettle(t, 5*time.Second)
	require.Equal(t, amqpfake.Settle{Tag: 2, Multiple: true, Ack: true}, s)
	require.NoError(t, f.stop())
	require.True(t, conn.IsClosed())
	noSettle(t, ch, 50*time.Millisecond)
	require.Equal(t, map[string]int{"s-1": 1, "s-2": 1}, got.get(), "s-3 was not started: it is not handled")
}

// Close stops a running Run, and Run returns nil.
func TestFakeCloseStopsRun(t *testing.T) {
	f := startFake(t, func(context.Context, *Message) error { return nil }, nil)
	ch := f.d.NextConn(t).NextConsumer(t)
	ch.Deliver(fakeDelivery(t, "s", 1, false))
	ackedUpTo(t, ch, 1)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	require.NoError(t, f.c.Close(ctx))
	select {
	case err := <-f.errc:
		require.NoError(t, err)
		f.errc <- err
	case <-time.After(10 * time.Second):
		t.Fatal("Close did not stop Run")
	}
}

// Parking: a poison message is published to the parking queue (mandatory, confirmed) before the
// original is acked. A parking publish that is returned or nacked is not a park: the original stays
// unacked and the parker tries again on a new connection.
func TestFakeParking(t *testing.T) {
	for _, answer := range []string{"ack", "return", "nack", "channel lost"} {
		t.Run(answer, func(t *testing.T) {
			var got calls
			f := startFake(t, func(_ context.Context, m *Message) error {
				got.add(m)
				return Poison(errors.New("bad order"))
			}, nil)
			ch := f.d.NextConn(t).NextConsumer(t)
			ch.Deliver(fakeDelivery(t, "s", 1, false))

			pch := f.pd.NextConn(t).NextChan(t)
			p := pch.NextPub(t, 5*time.Second)
			require.Equal(t, "", p.Exchange)
			require.Equal(t, "q.parked", p.Key)
			require.True(t, p.Mandatory, "parking is mandatory: an unroutable park is not a park")
			require.Equal(t, amqp.Persistent, p.Msg.DeliveryMode)
			require.Contains(t, p.Msg.Headers[protocol.HeaderParkReason], "bad order")
			require.Equal(t, "q", p.Msg.Headers[protocol.HeaderParkQueue])
			require.Equal(t, "s", p.Stamp.Stream)
			noSettle(t, ch, 200*time.Millisecond) // not parked until confirmed

			switch answer {
			case "return":
				pch.ReturnPublish(p)
				pch.ConfirmPublish(p.Tag, false, true, 0) // RabbitMQ acks a returned message
			case "nack":
				pch.ConfirmPublish(p.Tag, false, false, 0)
			case "channel lost":
				pch.Fail(&amqp.Error{Code: amqp.ChannelError, Reason: "lost"})
			}
			if answer != "ack" {
				noSettle(t, ch, 200*time.Millisecond)
				pch = f.pd.NextConn(t).NextChan(t) // the parker starts over on a new connection
				p2 := pch.NextPub(t, 5*time.Second)
				require.Equal(t, p.Stamp, p2.Stamp)
				p = p2
			}
			pch.ConfirmPublish(p.Tag, false, true, 0)
			ackedUpTo(t, ch, 1)
			select {
			case pk := <-f.parked:
				require.Equal(t, "q.parked", pk.Queue)
				require.True(t, pk.Accounted, "a handler's poison verdict accounts for the stamp")
				require.Contains(t, pk.Reason, "bad order")
			case <-time.After(5 * time.Second):
				t.Fatal("no OnParked")
			}
			// Accounted: its redelivery is dropped, not handled or parked again.
			ch.Deliver(fakeDelivery(t, "s", 1, true))
			ackedUpTo(t, ch, 2)
			pch.NoPub(t, 100*time.Millisecond)
			require.Equal(t, map[string]int{"s-1": 1}, got.get(), "poison is not retried")
			require.NoError(t, f.stop())
		})
	}
}

// A handler that keeps failing is retried MaxAttempts times, then parked.
func TestFakeRetryThenPark(t *testing.T) {
	var got calls
	f := startFake(t, func(_ context.Context, m *Message) error {
		got.add(m)
		return errors.New("database says no")
	}, func(c *Config) { c.MaxAttempts = 3 })
	ch := f.d.NextConn(t).NextConsumer(t)
	ch.Deliver(fakeDelivery(t, "s", 1, false))
	pch := f.pd.NextConn(t).NextChan(t)
	p := pch.NextPub(t, 5*time.Second)
	require.EqualValues(t, 3, p.Msg.Headers[protocol.HeaderParkAttempts])
	pch.ConfirmPublish(p.Tag, false, true, 0)
	ackedUpTo(t, ch, 1)
	require.Equal(t, map[string]int{"s-1": 3}, got.get())
	require.NoError(t, f.stop())
}

// The broker's basic.cancel (the queue was deleted) ends the session; a new one re-declares the
// topology and consumes again.
func TestFakeBrokerCancel(t *testing.T) {
	var got calls
	f := startFake(t, func(_ context.Context, m *Message) error { got.add(m); return nil }, nil)
	conn := f.d.NextConn(t)
	ch := conn.NextConsumer(t)
	ch.CancelConsumer()
	ch2 := f.d.NextConn(t).NextConsumer(t)
	require.True(t, conn.IsClosed(), "the old connection is closed")
	ch2.Deliver(fakeDelivery(t, "s", 1, false))
	ackedUpTo(t, ch2, 1)
	require.Equal(t, map[string]int{"s-1": 1}, got.get())
	require.NoError(t, f.stop())
}

// Duplicates on one channel: the same stamp delivered twice (a publisher's resend) is handled
// once and both deliveries are acked; an older sequence number is late, a jump opens a gap.
func TestFakeDuplicateOnOneChannel(t *testing.T) {
	var got calls
	f := startFake(t, func(_ context.Context, m *Message) error { got.add(m); return nil }, nil)
	ch := f.d.NextConn(t).NextConsumer(t)
	ch.Deliver(fakeDelivery(t, "s", 1, false))
	ch.Deliver(fakeDelivery(t, "s", 1, false))
	ch.Deliver(fakeDelivery(t, "s", 2, false))
	ackedUpTo(t, ch, 3)
	require.Equal(t, map[string]int{"s-1": 1, "s-2": 1}, got.get())
	require.Equal(t, 1.0, f.mem.Get(MetricDuplicates))
	require.NoError(t, f.stop())
}

// The parking queue's depth is read at session start on a channel of its own: a missing parking
// queue (404) closes that channel only, and consuming goes on.
func TestFakeParkingQueueDepth(t *testing.T) {
	for _, missing := range []bool{false, true} {
		t.Run(fmt.Sprintf("missing=%v", missing), func(t *testing.T) {
			var got calls
			f := startFake(t, func(_ context.Context, m *Message) error { got.add(m); return nil }, func(c *Config) {
				d := c.dial.(*amqpfake.Dialer)
				if missing {
					d.SetQueueErr("q.parked", nil)
				} else {
					d.SetQueue("q.parked", 7, 0)
				}
			})
			ch := f.d.NextConn(t).NextConsumer(t)
			ch.Deliver(fakeDelivery(t, "s", 1, false))
			ackedUpTo(t, ch, 1)
			require.False(t, ch.IsClosed(), "the consuming channel is not the one the 404 closed")
			if !missing {
				require.Eventually(t, func() bool { return f.mem.Get(MetricParkingQueueMessages) == 7 }, 5*time.Second, time.Millisecond)
			} else {
				require.Zero(t, f.mem.Get(MetricParkingQueueMessages))
			}
			require.Equal(t, map[string]int{"s-1": 1}, got.get())
			require.NoError(t, f.stop())
		})
	}
}

// slowRelease is a BoltStore whose claim takes a while to give back.
type slowRelease struct {
	*BoltStore
	released atomic.Bool
}

func (s *slowRelease) Claim(ctx context.Context) (func(), error) {
	release, err := s.BoltStore.Claim(ctx)
	if err != nil {
		return nil, err
	}
	s.released.Store(false)
	return func() {
		time.Sleep(50 * time.Millisecond)
		release()
		s.released.Store(true)
	}, nil
}

// Once Close returns, the Run has given back its claim on the store: another Consumer can take
// it at once (a restart in the same process must not see ErrStoreInUse).
func TestFakeCloseReleasesStore(t *testing.T) {
	bs, _ := openTestStore(t)
	store := &slowRelease{BoltStore: bs}
	d := amqpfake.New()
	c, err := NewWithStore(Config{
		URLs: []string{"amqp://guest:guest@fake:5672/"}, Queue: "q",
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)), dial: d, dialParking: amqpfake.New(),
	}, Store[*bolt.Tx](store))
	require.NoError(t, err)
	errc := make(chan error, 1)
	go func() { errc <- c.Run(context.Background(), func(context.Context, *Message) error { return nil }) }()
	d.NextConn(t).NextConsumer(t)
	require.NoError(t, c.Close(context.Background()))
	require.True(t, store.released.Load(), "Close returned before the Run gave back its claim on the store")
	release, err := bs.Claim(context.Background())
	require.NoError(t, err)
	release()
	require.NoError(t, <-errc)
}
