package publisher

import (
	"fmt"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/rabbitkit/rabbitkit/journal"
)

type flightState uint8

const (
	flightWaiting flightState = iota
	flightAcked
	flightNacked
)

// flight is one unconfirmed publish on the current channel.
type flight struct {
	tag   uint64
	e     *journal.Entry
	sent  time.Time
	state flightState
	ret   *amqp.Return // set when the broker returned it (before its ack)
}

// window is the confirm bookkeeping of one channel: a ring of flights in delivery-tag order. Tags
// start at 1 on every channel (reset) and are never compared across channels. Owned by the sender.
type window struct {
	buf      []flight
	head, n  int
	firstTag uint64 // tag of buf[head]; the next publish gets firstTag+n
}

func newWindow(size int) *window { return &window{buf: make([]flight, size), firstTag: 1} }

func (w *window) len() int   { return w.n }
func (w *window) full() bool { return w.n == len(w.buf) }

// reset forgets every flight: a new channel starts at tag 1.
func (w *window) reset() {
	for i := range w.buf {
		w.buf[i] = flight{}
	}
	w.head, w.n, w.firstTag = 0, 0, 1
}

func (w *window) at(i int) *flight { return &w.buf[(w.head+i)%len(w.buf)] }

// push records a successful basic.publish and returns its delivery tag.
func (w *window) push(e *journal.Entry, now time.Time) uint64 {
	if w.full() {
		panic("publisher: window overflow") // the sender never pushes into a full window
	}
	tag := w.firstTag + uint64(w.n)
	*w.at(w.n) = flight{tag: tag, e: e, sent: now}
	w.n++
	return tag
}

// confirm applies a basic.ack/basic.nack. With multiple it covers every waiting flight up to tag. A
// tag that was never published on this channel, or one already confirmed, is a protocol violation
// (the caller drops the channel).
func (w *window) confirm(tag uint64, multiple, ack bool) error {
	if w.n == 0 || tag < w.firstTag || tag >= w.firstTag+uint64(w.n) {
		return fmt.Errorf("publisher: confirm of unknown delivery tag %d (window %d..%d)", tag, w.firstTag, w.firstTag+uint64(w.n)-1)
	}
	st := flightNacked
	if ack {
		st = flightAcked
	}
	last := int(tag - w.firstTag)
	first := last
	if multiple {
		first = 0
	}
	if !multiple && w.at(last).state != flightWaiting {
		return fmt.Errorf("publisher: second confirm of delivery tag %d", tag)
	}
	for i := first; i <= last; i++ {
		if f := w.at(i); f.state == flightWaiting {
			f.state = st
		}
	}
	return nil
}

// markReturned attaches a basic.return to the waiting flight of stream/seq. It reports false when no
// waiting flight matches.
func (w *window) markReturned(stream string, seq int64, r *amqp.Return) bool {
	for i := 0; i < w.n; i++ {
		if f := w.at(i); f.state == flightWaiting && f.e.Seq == seq && f.e.Stream == stream {
			f.ret = r
			return true
		}
	}
	return false
}

// pop removes and returns the head flight once it is confirmed.
func (w *window) pop() (flight, bool) {
	if w.n == 0 {
		return flight{}, false
	}
	f := w.at(0)
	if f.state == flightWaiting {
		return flight{}, false
	}
	out := *f
	*f = flight{}
	w.head = (w.head + 1) % len(w.buf)
	w.firstTag++
	w.n--
	return out, true
}

// popAny removes and returns the head flight whatever its state (the channel is gone).
func (w *window) popAny() flight {
	f := w.at(0)
	out := *f
	*f = flight{}
	w.head = (w.head + 1) % len(w.buf)
	w.firstTag++
	w.n--
	return out
}

// minID is the journal ID of the oldest flight (flights are in ID order), 0 when empty.
func (w *window) minID() uint64 {
	if w.n == 0 {
		return 0
	}
	return w.at(0).e.ID
}

// only returns the single flight when exactly one is in the window and it is still waiting for its
// confirm (a confirmed one cannot be the cause of a channel error).
func (w *window) only() *journal.Entry {
	if w.n != 1 || w.at(0).state != flightWaiting {
		return nil
	}
	return w.at(0).e
}
