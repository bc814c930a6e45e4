package topology

import (
	"fmt"
	"maps"
	"strconv"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/rabbitkit/rabbitkit/protocol"
)

// MaxPartitions bounds Partitions.Count.
const MaxPartitions = 1024

// Partitions is a queue split in Count partitions, for consumers that scale out and keep
// per-stream order: queues "<Queue>.<i>" (i from 0 to Count-1), each declared with
// x-single-active-consumer so that the broker lets one consumer at a time take from it, bound to
// the direct exchange Exchange with routing key "<i>". A publisher routes each message of a
// stream to the partition protocol.Partition(stream, Count) gives: set Message.Stream and
// RoutingKey(stream) as its routing key. Publisher-side hashing was chosen over RabbitMQ's
// consistent-hash exchange: it needs no plugin, and the partition of a stream is a documented
// function (docs/PROTOCOL.md) that a consumer and an operator can compute too.
//
// Changing Count moves streams to other partitions: drain the queues first (messages of a stream
// left in its old partition would be consumed beside its new one, out of order).
type Partitions struct {
	Exchange string // direct exchange the publisher sends to; must not be empty
	Queue    string // name prefix of the partition queues; must not be empty
	Count    int    // 1..MaxPartitions
	Type     string // Classic (default) or Quorum
	// Args are extra arguments of every partition queue (x-single-active-consumer is always set).
	Args amqp.Table
}

// QueueName returns the name of partition i's queue.
func (p Partitions) QueueName(i int) string { return p.Queue + "." + strconv.Itoa(i) }

// Of returns the partition of stream.
func (p Partitions) Of(stream string) int { return protocol.Partition(stream, p.Count) }

// RoutingKey returns the routing key that sends a message of stream to its partition.
func (p Partitions) RoutingKey(stream string) string { return strconv.Itoa(p.Of(stream)) }

// Validate reports what makes p impossible to declare; the error wraps ErrInvalid.
func (p Partitions) Validate() error {
	switch {
	case p.Exchange == "":
		return fmt.Errorf("%w: partitions without an exchange", ErrInvalid)
	case p.Queue == "":
		return fmt.Errorf("%w: partitions without a queue name", ErrInvalid)
	case p.Count < 1 || p.Count > MaxPartitions:
		return fmt.Errorf("%w: partition count %d, want 1..%d", ErrInvalid, p.Count, MaxPartitions)
	}
	return p.Topology().Validate()
}

// Topology returns the declarations of the exchange, the partition queues and their bindings.
func (p Partitions) Topology() Topology {
	t := Topology{Exchanges: []Exchange{{Name: p.Exchange, Kind: amqp.ExchangeDirect}}}
	for i := range p.Count {
		args := maps.Clone(p.Args)
		if args == nil {
			args = amqp.Table{}
		}
		args["x-single-active-consumer"] = true
		t.Queues = append(t.Queues, Queue{Name: p.QueueName(i), Type: p.Type, Args: args})
		t.Bindings = append(t.Bindings, Binding{Queue: p.QueueName(i), Exchange: p.Exchange, Key: strconv.Itoa(i)})
	}
	return t
}
