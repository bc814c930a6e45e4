package publisher

import (
	"context"
	"maps"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/rabbitkit/rabbitkit/protocol"
)

// An in-process fake of the narrow AMQP surface (connector/conn/channel). The test goroutine plays
// the broker: it reads publishes and answers with confirms, returns and closes, with amqp091-go's
// semantics: confirms in tag order, returns before the confirm, close notification before the
// listeners are closed, tags from 1 on every channel.

type fakeConnector struct {
	conns chan *fakeConn
	down  atomic.Bool // connect waits (like a dial retrying) while set
	// blockedAtOpen: new connections start with connection.blocked pending, as RabbitMQ sends it
	// right after connection.open-ok while an alarm is in effect.
	blockedAtOpen atomic.Bool
	// misuse counts violations of the hold/release contract on every connection: a publish
	// outside a hold, a hold while held, a release while not held.
	misuse atomic.Int64
	// chanErr, while set, fails every channel set-up with it (a 403 on the topology, a 406
	// conflict), the connection staying open.
	chanErr atomic.Pointer[amqp.Error]
}

func newFakeConnector() *fakeConnector { return &fakeConnector{conns: make(chan *fakeConn, 16)} }

func (f *fakeConnector) connect(ctx context.Context) (conn, string, error) {
	for f.down.Load() {
		select {
		case <-ctx.Done():
			return nil, "", ctx.Err()
		case <-time.After(5 * time.Millisecond):
		}
	}
	c := &fakeConn{blocks: make(chan amqp.Blocking, 16), closes: make(chan *amqp.Error, 1), chans: make(chan *fakeChan, 16), f: f}
	if f.blockedAtOpen.Load() {
		c.blocks <- amqp.Blocking{Active: true, Reason: "low on memory"} // as RabbitMQ under an alarm
	}
	f.conns <- c
	return c, "amqp://guest:secret@fake:5672/", nil
}

type fakeConn struct {
	mu     sync.Mutex
	blocks chan amqp.Blocking
	closes chan *amqp.Error
	chans  chan *fakeChan
	open   []*fakeChan
	dead   bool
	f      *fakeConnector
	held   atomic.Bool  // between hold and release
	holds  atomic.Int64 // hold calls
}

func (c *fakeConn) channel(ctx context.Context, window int) (channel, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.dead {
		return nil, amqp.ErrClosed
	}
	if e := c.f.chanErr.Load(); e != nil {
		return nil, e
	}
	ch := &fakeChan{conf: make(chan amqp.Confirmation, window+8), ret: make(chan amqp.Return, window+8),
		cls: make(chan *amqp.Error, 1), pubs: make(chan fakePub, 4096), conn: c}
	c.open = append(c.open, ch)
	c.chans <- ch
	return ch, nil
}
func (c *fakeConn) blocked() <-chan amqp.Blocking { return c.blocks }
func (c *fakeConn) closed() <-chan *amqp.Error    { return c.closes }
func (c *fakeConn) isClosed() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.dead
}
func (c *fakeConn) close(time.Time) { c.fail(nil) }
func (c *fakeConn) forceClose()     { c.fail(nil) }
func (c *fakeConn) hold() {
	c.holds.Add(1)
	if c.held.Swap(true) {
		c.f.misuse.Add(1)
	}
}
func (c *fakeConn) release() {
	if !c.held.Swap(false) {
		c.f.misuse.Add(1)
	}
}

// fail kills the connection with err (nil: clean close), like amqp091-go's shutdown.
func (c *fakeConn) fail(err *amqp.Error) {
	c.mu.Lock()
	if c.dead {
		c.mu.Unlock()
		return
	}
	c.dead = true
	chans := c.open
	c.mu.Unlock()
	if err != nil {
		c.closes <- err
	}
	close(c.closes)
	for _, ch := range chans {
		ch.fail(err)
	}
}

type fakePub struct {
	tag           uint64
	exchange, key string
	mandatory     bool
	msg           amqp.Publishing
	stamp         protocol.Stamp
}

type fakeChan struct {
	mu   sync.Mutex
	conf chan amqp.Confirmation
	ret  chan amqp.Return
	cls  chan *amqp.Error
	pubs chan fakePub
	tag  uint64
	dead bool
	conn *fakeConn
}

func (ch *fakeChan) publish(_ context.Context, exchange, key string, mandatory bool, msg amqp.Publishing) error {
	ch.mu.Lock()
	defer ch.mu.Unlock()
	if ch.dead {
		return amqp.ErrClosed
	}
	if !ch.conn.held.Load() {
		ch.conn.f.misuse.Add(1) // a publish must leave with its pass's held writes
	}
	ch.tag++
	msg.Headers = maps.Clone(msg.Headers) // on the wire at once, like amqp091-go: the sender reuses its table
	st, _, _ := protocol.Decode(msg.MessageId, msg.Headers)
	ch.pubs <- fakePub{tag: ch.tag, exchange: exchange, key: key, mandatory: mandatory, msg: msg, stamp: st}
	return nil
}
func (ch *fakeChan) confirms() <-chan amqp.Confirmation { return ch.conf }
func (ch *fakeChan) returns() <-chan amqp.Return        { return ch.ret }
func (ch *fakeChan) closed() <-chan *amqp.Error         { return ch.cls }
func (ch *fakeChan) close()                             { ch.fail(nil) }

func (ch *fakeChan) fail(err *amqp.Error) {
	ch.mu.Lock()
	defer ch.mu.Unlock()
	if ch.dead {
		return
	}
	ch.dead = true
	if err != nil {
		ch.cls <- err
	}
	close(ch.cls)
	close(ch.conf)
	close(ch.ret)
}

// ack/nack like a broker with multiple: amqp091-go expands it into one Confirmation per tag.
func (ch *fakeChan) confirm(tag uint64, multiple, ack bool, from uint64) {
	first := tag
	if multiple {
		first = from
	}
	for t := first; t <= tag; t++ {
		ch.conf <- amqp.Confirmation{DeliveryTag: t, Ack: ack}
	}
}

func (ch *fakeChan) returnMsg(p fakePub) {
	ch.ret <- amqp.Return{ReplyCode: amqp.NoRoute, ReplyText: "NO_ROUTE", Exchange: p.exchange, RoutingKey: p.key,
		Headers: p.msg.Headers, MessageId: p.msg.MessageId, Body: p.msg.Body}
}

// recv reads the next publish, failing the test after d.
func recvPub(t *testing.T, ch *fakeChan, d time.Duration) fakePub {
	t.Helper()
	select {
	case p := <-ch.pubs:
		return p
	case <-time.After(d):
		t.Fatalf("no publish within %v", d)
		return fakePub{}
	}
}

// noPub asserts nothing is published for d.
func noPub(t *testing.T, ch *fakeChan, d time.Duration) {
	t.Helper()
	select {
	case p := <-ch.pubs:
		t.Fatalf("unexpected publish %s (tag %d)", p.stamp, p.tag)
	case <-time.After(d):
	}
}

func nextConn(t *testing.T, f *fakeConnector) *fakeConn {
	t.Helper()
	select {
	case c := <-f.conns:
		return c
	case <-time.After(5 * time.Second):
		t.Fatal("no connection")
		return nil
	}
}

func nextChan(t *testing.T, c *fakeConn) *fakeChan {
	t.Helper()
	select {
	case ch := <-c.chans:
		return ch
	case <-time.After(5 * time.Second):
		t.Fatal("no channel")
		return nil
	}
}
