package publisher

import (
	"errors"
	"fmt"
)

// Sentinel errors. Match them with errors.Is; returned errors usually wrap them with detail.
var (
	// ErrClosed is returned by Publish, PublishAsync, TryPublish, PublishBatch and Flush once Close
	// has begun.
	ErrClosed = errors.New("publisher: closed")
	// ErrBufferFull is returned by TryPublish when MaxBuffered messages already wait to be journaled.
	ErrBufferFull = errors.New("publisher: accept buffer full")
	// ErrInvalidConfig is returned by New for a Config that can never work.
	ErrInvalidConfig = errors.New("publisher: invalid config")
	// ErrInvalidMessage is returned for a message that can never be published: bad header types, an
	// exchange, routing key, string property or header key over AMQP's 255 bytes, headers too large
	// for one frame, an expiration or delivery mode RabbitMQ refuses, an int header beyond 32 bits.
	// Returned by Publish, it means nothing was journaled. A *ParkedError wraps it too, for such
	// an entry found in the journal and parked unsent.
	ErrInvalidMessage = errors.New("publisher: invalid message")
	// ErrAcceptUnknown means the message may or may not be journaled: it is wrapped together with
	// the context's error when the caller's context ended while the journal was already writing the
	// message (the receipt's Journaled channel closes once the answer is known), and together with
	// journal.ErrBroken when the disk failed the commit itself (known only after a restart). Do not
	// publish the same payload again blindly: a second copy gets a new sequence number.
	ErrAcceptUnknown = errors.New("publisher: whether the message was journaled is unknown")
	// ErrUnconfirmed is the outcome of a receipt whose message was journaled but not confirmed when
	// the Publisher closed. It is not a failure: the message stays in the journal and is sent first
	// by the next Publisher opened on it.
	ErrUnconfirmed = errors.New("publisher: closed before the broker confirmed; the message stays journaled")
	// ErrParked is wrapped by *ParkedError: the message will never be sent again unless an operator
	// redrives it from the journal (journal.Redrive).
	ErrParked = errors.New("publisher: message parked")
	// ErrUnroutable is wrapped by *ParkedError when the broker returned a mandatory message because no
	// queue was bound for its routing key.
	ErrUnroutable = errors.New("publisher: message unroutable")
)

// ParkedError is the outcome of a message that was moved to the journal's parked set. It wraps
// ErrParked, and ErrUnroutable when Returned is true.
type ParkedError struct {
	ID         uint64 // journal ID of the entry (before parking)
	Stream     string
	Seq        int64
	Exchange   string
	RoutingKey string
	Returned   bool // the broker returned it as unroutable (basic.return)
	// Invalid: the entry breaks an AMQP or RabbitMQ limit (ReplyText says which) and was parked
	// without being sent. Publish refuses such messages; the journal can still hold one written
	// by an older version or through the journal API.
	Invalid   bool
	ReplyCode uint16 // AMQP reply code: of the basic.return, of the channel error, 0 for nacks
	ReplyText string
	Attempts  uint32 // sends that ended in a nack or a channel error attributed to this message
}

// Error implements error.
func (e *ParkedError) Error() string {
	what := "parked"
	switch {
	case e.Returned:
		what = "unroutable, parked"
	case e.Invalid:
		what = "invalid, parked unsent"
	}
	return fmt.Sprintf("publisher: message %s/%d to exchange %q key %q %s: %d %s (attempts %d)",
		e.Stream, e.Seq, e.Exchange, e.RoutingKey, what, e.ReplyCode, e.ReplyText, e.Attempts)
}

// Unwrap lets errors.Is match ErrParked and, for returns, ErrUnroutable.
func (e *ParkedError) Unwrap() []error {
	switch {
	case e.Returned:
		return []error{ErrParked, ErrUnroutable}
	case e.Invalid:
		return []error{ErrParked, ErrInvalidMessage}
	}
	return []error{ErrParked}
}

// reason is the text stored with the parked journal entry.
func (e *ParkedError) reason() string {
	if e.Returned {
		return fmt.Sprintf("unroutable: basic.return %d %s (exchange %q, key %q)", e.ReplyCode, e.ReplyText, e.Exchange, e.RoutingKey)
	}
	if e.Invalid {
		return "invalid, never sent: " + e.ReplyText
	}
	return fmt.Sprintf("%d %s after %d attempts", e.ReplyCode, e.ReplyText, e.Attempts)
}

// ErrOutcomeForgotten is the outcome of a receipt first asked about after more than 65536 later
// messages were parked, when its own message was parked too: the Publisher remembers the ID of every
// parked message, but the *ParkedError only of the latest 65536. It comes wrapped together with
// ErrParked (errors.Is matches both); look the details up with journal.Parked. A confirmed message
// is never reported with it.
var ErrOutcomeForgotten = errors.New("publisher: parked outcome no longer in memory")
