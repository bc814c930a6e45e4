package amqpfake

import (
	"context"
	"maps"
	"sync"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/rabbitkit/rabbitkit/internal/amqpseam"
	"github.com/rabbitkit/rabbitkit/protocol"
	"github.com/rabbitkit/rabbitkit/topology"
)

// Pub is one basic.publish.
type Pub struct {
	Tag           uint64 // its publish sequence number in confirm mode, else 0
	Exchange, Key string
	Mandatory     bool
	Msg           amqp.Publishing
	Stamp         protocol.Stamp // decoded from Msg (zero when it carries none)
}

// Settle is one basic.ack or basic.nack of a delivery.
type Settle struct {
	Tag               uint64
	Multiple, Requeue bool
	Ack               bool // basic.ack; false: basic.nack
}

// Channel is a fake channel.
type Channel struct {
	conn    *Conn
	mu      sync.Mutex
	closes  chan *amqp.Error
	conf    chan amqp.Confirmation
	rets    []chan amqp.Return
	cancels []chan string
	pubs    chan Pub
	settles chan Settle
	dels    chan amqp.Delivery
	ctag    string
	pubTag  uint64
	delTag  uint64
	dead    bool

	declared  topology.Topology
	prefetch  int
	exclusive bool
	cancelled bool
}

var _ amqpseam.Channel = (*Channel)(nil)

// Closed implements amqpseam.Channel.
func (ch *Channel) Closed() <-chan *amqp.Error { return ch.closes }

// IsClosed implements amqpseam.Channel.
func (ch *Channel) IsClosed() bool {
	ch.mu.Lock()
	defer ch.mu.Unlock()
	return ch.dead
}

// Close implements amqpseam.Channel: a clean close.
func (ch *Channel) Close() error { ch.Fail(nil); return nil }

// Confirm implements amqpseam.Channel.
func (ch *Channel) Confirm(size int) (<-chan amqp.Confirmation, error) {
	ch.mu.Lock()
	defer ch.mu.Unlock()
	if ch.dead {
		return nil, amqp.ErrClosed
	}
	ch.conf = make(chan amqp.Confirmation, size)
	return ch.conf, nil
}

// NotifyReturn implements amqpseam.Channel.
func (ch *Channel) NotifyReturn(size int) <-chan amqp.Return {
	ch.mu.Lock()
	defer ch.mu.Unlock()
	l := make(chan amqp.Return, size)
	if ch.dead {
		close(l)
	} else {
		ch.rets = append(ch.rets, l)
	}
	return l
}

// NotifyCancel implements amqpseam.Channel.
func (ch *Channel) NotifyCancel(size int) <-chan string {
	ch.mu.Lock()
	defer ch.mu.Unlock()
	l := make(chan string, size)
	if ch.dead {
		close(l)
	} else {
		ch.cancels = append(ch.cancels, l)
	}
	return l
}

// Publish implements amqpseam.Channel: the message is on the wire at once (its headers are
// copied, as the caller may reuse the table), and the test reads it from Pubs.
func (ch *Channel) Publish(_ context.Context, exchange, key string, mandatory bool, msg amqp.Publishing) error {
	ch.mu.Lock()
	defer ch.mu.Unlock()
	if ch.dead {
		return amqp.ErrClosed
	}
	if ch.conn.d.RequireHold && !ch.conn.held.Load() {
		ch.conn.d.Misuse.Add(1)
	}
	var tag uint64
	if ch.conf != nil {
		ch.pubTag++
		tag = ch.pubTag
	}
	msg.Headers = maps.Clone(msg.Headers)
	st, _, _ := protocol.Decode(msg.MessageId, msg.Headers)
	ch.pubs <- Pub{Tag: tag, Exchange: exchange, Key: key, Mandatory: mandatory, Msg: msg, Stamp: st}
	return nil
}

// Declare implements amqpseam.Channel: it records t, or fails with Dialer.ChanErr.
func (ch *Channel) Declare(t topology.Topology) error {
	if err := t.Validate(); err != nil {
		return err
	}
	if e := ch.conn.d.ChanErr.Load(); e != nil {
		ch.Fail(e)
		return e
	}
	ch.mu.Lock()
	if ch.dead {
		ch.mu.Unlock()
		return amqp.ErrClosed
	}
	ch.declared = t
	ch.mu.Unlock()
	ch.conn.chans <- ch
	return nil
}

// Inspect implements amqpseam.Channel with what Dialer.SetQueue or SetQueueErr set.
func (ch *Channel) Inspect(queue string) (amqp.Queue, error) {
	if ch.IsClosed() {
		return amqp.Queue{}, amqp.ErrClosed
	}
	s := ch.conn.d.queue(queue)
	if s.err != nil {
		ch.Fail(s.err)
		return amqp.Queue{}, s.err
	}
	return s.q, nil
}

// Qos implements amqpseam.Channel.
func (ch *Channel) Qos(prefetch int) error {
	ch.mu.Lock()
	defer ch.mu.Unlock()
	if ch.dead {
		return amqp.ErrClosed
	}
	ch.prefetch = prefetch
	return nil
}

// Consume implements amqpseam.Channel; the test sends deliveries with Deliver.
func (ch *Channel) Consume(_, tag string, exclusive bool) (<-chan amqp.Delivery, error) {
	ch.mu.Lock()
	defer ch.mu.Unlock()
	if ch.dead {
		return nil, amqp.ErrClosed
	}
	ch.dels = make(chan amqp.Delivery, 4096)
	ch.ctag, ch.exclusive = tag, exclusive
	ch.conn.cons <- ch
	return ch.dels, nil
}

// Cancel implements amqpseam.Channel: the deliveries channel closes, as at cancel-ok.
func (ch *Channel) Cancel(string) error {
	ch.mu.Lock()
	defer ch.mu.Unlock()
	if ch.dead {
		return amqp.ErrClosed
	}
	if ch.dels != nil && !ch.cancelled {
		close(ch.dels)
	}
	ch.cancelled = true
	return nil
}

// Ack implements amqpseam.Channel; the test reads it from Settles.
func (ch *Channel) Ack(tag uint64, multiple bool) error {
	return ch.settle(Settle{Tag: tag, Multiple: multiple, Ack: true})
}

// Nack implements amqpseam.Channel; the test reads it from Settles.
func (ch *Channel) Nack(tag uint64, multiple, requeue bool) error {
	return ch.settle(Settle{Tag: tag, Multiple: multiple, Requeue: requeue})
}

func (ch *Channel) settle(s Settle) error {
	ch.mu.Lock()
	defer ch.mu.Unlock()
	if ch.dead {
		return amqp.ErrClosed
	}
	ch.settles <- s
	return nil
}

// Fail closes the channel with err (nil: a clean close): the close notification, then every
// listener and the deliveries channel close.
func (ch *Channel) Fail(err *amqp.Error) {
	ch.mu.Lock()
	defer ch.mu.Unlock()
	if ch.dead {
		return
	}
	ch.dead = true
	if err != nil {
		ch.closes <- err
	}
	close(ch.closes)
	if ch.conf != nil {
		close(ch.conf)
	}
	for _, l := range ch.rets {
		close(l)
	}
	for _, l := range ch.cancels {
		close(l)
	}
	if ch.dels != nil && !ch.cancelled {
		close(ch.dels)
	}
}
