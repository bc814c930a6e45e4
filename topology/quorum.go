package topology

// Quorum queues that never drop a message silently.
//
// A quorum queue has a delivery limit: past it the broker dead-letters the message, or drops it
// without a trace when the queue has no dead-letter target (seen on 3.10 with x-delivery-limit 2;
// RabbitMQ 4 sets a limit of 20 on every quorum queue). Every consumer crash requeues its whole
// prefetch window, so a crash-looping consumer raises the delivery count of innocent neighbours
// too. topology therefore gives every quorum queue a dead-letter target, the consumer's parking
// queue, and an explicit delivery limit, unless Queue.Args set them.

import (
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"sync"

	amqp "github.com/rabbitmq/amqp091-go"
)

// DefaultDeliveryLimit is the x-delivery-limit a quorum queue gets unless its Args set one. It is
// RabbitMQ 4's default, set explicitly so that a queue behaves the same on 3.x (where there is no
// default limit: a message that crashes every consumer is redelivered forever) and on 4.x. It is a
// backstop: the consumer parks a poison message itself well before it (Config.MaxAttempts), and a
// message past it is dead-lettered to the parking queue, not dropped.
const DefaultDeliveryLimit = 20

// Argument names topology sets on a quorum queue (docs/DESIGN.md, topology/).
const (
	ArgDeadLetterExchange   = "x-dead-letter-exchange"
	ArgDeadLetterRoutingKey = "x-dead-letter-routing-key"
	ArgDeadLetterStrategy   = "x-dead-letter-strategy"
	ArgOverflow             = "x-overflow"
	ArgDeliveryLimit        = "x-delivery-limit"
)

// ParkingQueueOf is the dead-letter target topology gives quorum queue name: name + ".parked",
// the consumer's default parking queue (consumer.Config.ParkingQueue).
func ParkingQueueOf(name string) string { return name + ".parked" }

// DeclareArgs returns the arguments q is declared with: its Args, x-queue-type from Type, and for
// a quorum queue the safety defaults, each only where Args does not set that key:
//
//   - x-dead-letter-exchange "" (the default exchange) unless Args set one, and then, unless Args
//     set x-dead-letter-routing-key, that key ParkingQueueOf(Name) (declared by the consumer): past the delivery limit (or a TTL, or a length limit) the broker moves the
//     message to the parking queue, where `rabbitkit parked` shows and re-drives it;
//   - x-dead-letter-strategy at-least-once, so the move is confirmed by the parking queue before
//     the quorum queue forgets the message (the default, at-most-once, can lose it), and the
//     x-overflow reject-publish it needs (RabbitMQ falls back to at-most-once with drop-head). Not
//     set when Args choose another x-overflow;
//   - x-delivery-limit DefaultDeliveryLimit.
//
// Queue.NoDeadLetter turns every default off (for dead-lettering set by a policy); then an
// x-delivery-limit in Args is refused (ErrInvalid): topology cannot see policies, and a limit
// without a dead-letter target drops messages. The error wraps ErrInvalid.
func (q Queue) DeclareArgs() (amqp.Table, error) {
	args := amqp.Table{}
	maps.Copy(args, q.Args)
	typ := q.Type
	if typ == "" {
		typ = Classic
	}
	args[amqp.QueueTypeArg] = typ
	if typ != Quorum {
		return args, nil
	}
	_, hasDLX := q.Args[ArgDeadLetterExchange]
	_, hasDLRK := q.Args[ArgDeadLetterRoutingKey]
	_, hasLimit := q.Args[ArgDeliveryLimit]
	if q.NoDeadLetter {
		if hasLimit && !hasDLX {
			return nil, fmt.Errorf("%w: quorum queue %q sets %s with NoDeadLetter and no %s: past the limit the broker would drop messages (set the limit in the same policy as the dead-letter target instead)",
				ErrInvalid, q.Name, ArgDeliveryLimit, ArgDeadLetterExchange)
		}
		return args, nil
	}
	if !hasDLX {
		args[ArgDeadLetterExchange] = ""
		if !hasDLRK {
			args[ArgDeadLetterRoutingKey] = ParkingQueueOf(q.Name)
		}
	}
	if _, ok := q.Args[ArgDeadLetterStrategy]; !ok {
		switch ov, set := q.Args[ArgOverflow]; {
		case !set:
			args[ArgOverflow] = "reject-publish"
			args[ArgDeadLetterStrategy] = "at-least-once"
		case ov == "reject-publish":
			args[ArgDeadLetterStrategy] = "at-least-once"
		}
	}
	if !hasLimit {
		args[ArgDeliveryLimit] = int64(DefaultDeliveryLimit)
	}
	return args, nil
}

// defaulted reports whether DeclareArgs adds arguments to q's own (so that a queue declared
// before with q's own arguments only conflicts with it).
func (q Queue) defaulted() bool {
	if q.Type != Quorum || q.NoDeadLetter {
		return false
	}
	args, err := q.DeclareArgs()
	return err == nil && len(args) > len(q.Args)+1 // +1: x-queue-type
}

// legacyQueues holds the queues whose declaration with the safety defaults failed with 406: they
// exist with other arguments (declared by an older rabbitkit, by hand, or with other Args). The
// next Declare checks that they still exist and match their own Args, without the defaults.
// Process-wide, keyed by queue name: Declare has one channel only, which the 406 closed.
var legacyQueues sync.Map // queue name -> struct{}

// PolicyHint is the rabbitmqctl command that gives an existing quorum queue the dead-letter target
// topology would have declared it with (arguments cannot be changed on an existing queue; a policy
// can). A queue takes one policy only (the highest priority): merge these keys into an existing one.
// It applies to "queues" (its pattern names the one queue): RabbitMQ 3.10 refuses
// --apply-to quorum_queues, which came with 3.12.
func PolicyHint(queue string) string {
	return fmt.Sprintf(`rabbitmqctl set_policy --apply-to queues --priority 10 rk-dlx-%s '^%s$' '{"dead-letter-exchange":"","dead-letter-routing-key":"%s","dead-letter-strategy":"at-least-once","overflow":"reject-publish"}'`,
		queue, regexpQuote(queue), ParkingQueueOf(queue))
}

// regexpQuote escapes the regexp metacharacters of a queue name (policies match by regexp).
func regexpQuote(s string) string {
	out := make([]byte, 0, len(s))
	for i := 0; i < len(s); i++ {
		switch c := s[i]; c {
		case '\\', '.', '+', '*', '?', '(', ')', '|', '[', ']', '{', '}', '^', '$':
			out = append(out, '\\', c)
		case '\'':
			out = append(out, `'\''`...) // the command line quotes the pattern with '
		default:
			out = append(out, c)
		}
	}
	return string(out)
}

// declareQueue declares q on ch (see Declare).
func (t Topology) declareQueue(ch *amqp.Channel, q Queue) error {
	args, err := q.DeclareArgs()
	if err != nil {
		return err
	}
	if !q.defaulted() {
		if _, err := ch.QueueDeclare(q.Name, true, false, false, false, args); err != nil {
			return fmt.Errorf("topology: declare queue %q: %w", q.Name, err)
		}
		return nil
	}
	if _, legacy := legacyQueues.Load(q.Name); !legacy {
		_, err := ch.QueueDeclare(q.Name, true, false, false, false, args)
		var aerr *amqp.Error
		if errors.As(err, &aerr) && aerr.Code == amqp.PreconditionFailed {
			legacyQueues.Store(q.Name, struct{}{})
			return fmt.Errorf("topology: declare queue %q: %w (it exists with other arguments: the next declaration checks it without the dead-letter defaults)", q.Name, err)
		}
		if err != nil {
			return fmt.Errorf("topology: declare queue %q: %w", q.Name, err)
		}
		return nil
	}
	// It exists with other arguments. Passive first: if it is gone, it is declared with the
	// defaults next time, never re-created without them.
	if _, err := ch.QueueDeclarePassive(q.Name, true, false, false, false, nil); err != nil {
		legacyQueues.Delete(q.Name)
		return fmt.Errorf("topology: declare queue %q: %w", q.Name, err)
	}
	own := amqp.Table{}
	maps.Copy(own, q.Args)
	own[amqp.QueueTypeArg] = Quorum
	if _, err := ch.QueueDeclare(q.Name, true, false, false, false, own); err != nil {
		// Not the arguments of an older rabbitkit either: a real conflict, reported as before.
		legacyQueues.Delete(q.Name)
		return fmt.Errorf("topology: declare queue %q: %w (its arguments differ from Queue.Args, not only by the dead-letter defaults)", q.Name, err)
	}
	if _, warned := warnedQueues.LoadOrStore(q.Name, struct{}{}); !warned {
		t.logger().Warn("topology: quorum queue exists without a dead-letter target (declared by an older rabbitkit or by hand; arguments cannot be added to an existing queue): "+
			"past its delivery limit (RabbitMQ 4 defaults it to 20; a consumer crash requeues its whole prefetch window) the broker DROPS messages without a trace, unless a policy sets a dead-letter target. Add one",
			"queue", q.Name, "parking_queue", ParkingQueueOf(q.Name), "policy", PolicyHint(q.Name))
	}
	return nil
}

// warnedQueues: the legacy warning is logged once per queue and process.
var warnedQueues sync.Map

func (t Topology) logger() *slog.Logger {
	if t.Logger != nil {
		return t.Logger
	}
	return slog.Default()
}

// DeclareConn is Declare for a caller that also has ch's connection: a quorum queue that may
// exist without the dead-letter defaults is first declared on a channel of its own, so that the
// 406 of an old queue closes that one, not ch, and the first declaration succeeds already (with
// the warning). Declare alone fails once in that case.
func (t Topology) DeclareConn(conn *amqp.Connection, ch *amqp.Channel) error {
	if err := t.Validate(); err != nil {
		return err
	}
	for _, q := range t.Queues {
		if !q.defaulted() {
			continue
		}
		if _, legacy := legacyQueues.Load(q.Name); legacy {
			continue
		}
		if err := probeQueue(conn, q); err != nil {
			return err
		}
	}
	return t.Declare(ch)
}

// probeQueue declares q with its defaults on a channel of its own; a 406 marks it as an old queue.
func probeQueue(conn *amqp.Connection, q Queue) error {
	args, err := q.DeclareArgs()
	if err != nil {
		return err
	}
	pch, err := conn.Channel()
	if err != nil {
		return fmt.Errorf("topology: channel to declare queue %q: %w", q.Name, err)
	}
	_, err = pch.QueueDeclare(q.Name, true, false, false, false, args)
	var aerr *amqp.Error
	if errors.As(err, &aerr) && aerr.Code == amqp.PreconditionFailed {
		legacyQueues.Store(q.Name, struct{}{})
		return nil // pch is closed by the broker
	}
	_ = pch.Close()
	if err != nil {
		return fmt.Errorf("topology: declare queue %q: %w", q.Name, err)
	}
	return nil
}
