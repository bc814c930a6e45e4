// Package topology declares the exchanges, queues and bindings a publisher or consumer needs. A
// Topology is re-declared on every (re)connect, so a broker that lost its definitions (a restarted
// node without durable state, a deleted queue) gets them back before any message is sent.
//
// Everything declared here is durable: rabbitkit exists to not lose messages, and a transient queue
// loses them on a broker restart.
package topology

import (
	"errors"
	"fmt"
	"log/slog"

	amqp "github.com/rabbitmq/amqp091-go"
)

// Queue types accepted in Queue.Type.
const (
	Classic = "classic"
	Quorum  = "quorum"
)

// ErrInvalid is returned by Validate (and Declare) for a topology that can never be declared.
var ErrInvalid = errors.New("topology: invalid")

// Exchange is a durable exchange.
type Exchange struct {
	Name       string     // must not be empty (the default exchange needs no declaration)
	Kind       string     // "direct" (default), "topic", "fanout", "headers"
	AutoDelete bool       // delete when the last binding is removed
	Args       amqp.Table // optional arguments, e.g. alternate-exchange
}

// Queue is a durable queue.
type Queue struct {
	Name string     // must not be empty
	Type string     // Classic (default) or Quorum
	Args amqp.Table // optional arguments (x-overflow, x-max-length, ...); x-queue-type is set from Type
	// NoDeadLetter turns off the dead-letter and delivery-limit defaults of a quorum queue
	// (DeclareArgs), for a queue whose dead-letter target comes from a policy. Without a
	// dead-letter target a quorum queue drops messages past its delivery limit.
	NoDeadLetter bool
}

// Binding binds a queue to an exchange.
type Binding struct {
	Queue, Exchange, Key string
	Args                 amqp.Table
}

// Topology is a set of declarations applied in order: exchanges, queues, bindings.
type Topology struct {
	Exchanges []Exchange
	Queues    []Queue
	Bindings  []Binding
	// Logger receives Declare's warning about an existing quorum queue without a dead-letter
	// target. Default slog.Default().
	Logger *slog.Logger
}

// Validate reports the first declaration that can never succeed. The error wraps ErrInvalid.
func (t Topology) Validate() error {
	for _, e := range t.Exchanges {
		if e.Name == "" {
			return fmt.Errorf("%w: exchange with an empty name", ErrInvalid)
		}
		switch e.Kind {
		case "", amqp.ExchangeDirect, amqp.ExchangeTopic, amqp.ExchangeFanout, amqp.ExchangeHeaders:
		default:
			return fmt.Errorf("%w: exchange %q has unknown kind %q", ErrInvalid, e.Name, e.Kind)
		}
	}
	for _, q := range t.Queues {
		if q.Name == "" {
			return fmt.Errorf("%w: queue with an empty name (server-named queues are not durable)", ErrInvalid)
		}
		if q.Type != "" && q.Type != Classic && q.Type != Quorum {
			return fmt.Errorf("%w: queue %q has unknown type %q (want %q or %q)", ErrInvalid, q.Name, q.Type, Classic, Quorum)
		}
		if _, err := q.DeclareArgs(); err != nil {
			return err
		}
	}
	for _, b := range t.Bindings {
		if b.Queue == "" || b.Exchange == "" {
			return fmt.Errorf("%w: binding %q -> %q needs a queue and an exchange", ErrInvalid, b.Exchange, b.Queue)
		}
	}
	return nil
}

// Declare declares everything on ch, in order: exchanges, queues (with Queue.DeclareArgs),
// bindings. The parking queue a quorum queue dead-letters to is not declared here but by the
// consumer (or in the topology): declared by a publisher too it would conflict with a parking queue
// the consumer's topology declares as quorum, and a classic one on a node that is down would stop
// the publisher's set-up. Until it exists the broker keeps dead-lettered messages (at-least-once)
// and moves them once it does (about 3 minutes later on 3.10.8, seen). It is idempotent. A declaration that conflicts with an existing one (e.g. a queue
// redeclared with another type) closes the channel with 406 PRECONDITION_FAILED; the returned
// error wraps the *amqp.Error.
//
// A quorum queue that exists without the dead-letter defaults (declared by an older rabbitkit)
// fails once with that 406; the next Declare (the caller's reconnect) checks it against its own
// Args only, and logs a warning with the policy that gives it a
// dead-letter target (PolicyHint).
func (t Topology) Declare(ch *amqp.Channel) error {
	if err := t.Validate(); err != nil {
		return err
	}
	for _, e := range t.Exchanges {
		kind := e.Kind
		if kind == "" {
			kind = amqp.ExchangeDirect
		}
		if err := ch.ExchangeDeclare(e.Name, kind, true, e.AutoDelete, false, false, e.Args); err != nil {
			return fmt.Errorf("topology: declare exchange %q: %w", e.Name, err)
		}
	}
	for _, q := range t.Queues {
		if err := t.declareQueue(ch, q); err != nil {
			return err
		}
	}
	for _, b := range t.Bindings {
		if err := ch.QueueBind(b.Queue, b.Key, b.Exchange, false, b.Args); err != nil {
			return fmt.Errorf("topology: bind queue %q to %q with key %q: %w", b.Queue, b.Exchange, b.Key, err)
		}
	}
	return nil
}
