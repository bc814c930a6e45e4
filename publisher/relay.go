package publisher

import (
	"context"
	"fmt"

	"github.com/rabbitkit/rabbitkit/internal/amqpconn"
)

// Relay sends the entries of an Outbox that something else fills (the PostgreSQL outbox of
// package pgoutbox, where the service's own transactions insert the messages): the same sender
// as a Publisher's, with the same confirms, in-flight window, resends after a reconnect, parking
// of unroutable and refused entries, and alarm handling. It accepts nothing itself: there is no
// Publish. Entries are sent in ID order, each stream in sequence order, and deleted from the
// outbox once the broker confirmed them.
type Relay struct{ p *Publisher }

// NewRelay validates cfg and starts sending ob in the background. cfg.Journal and
// cfg.JournalPath must be unset; cfg.Source defaults to ob.Source() and must match it.
// MaxBuffered is unused. The Relay never closes ob.
func NewRelay(cfg Config, ob Outbox) (*Relay, error) {
	if ob == nil {
		return nil, fmt.Errorf("%w: nil Outbox", ErrInvalidConfig)
	}
	cfg, err := cfg.check(ob)
	if err != nil {
		return nil, err
	}
	cfg.MaxBuffered = 1
	p := &Publisher{cfg: cfg, log: cfg.Logger, status: amqpconn.NewStatus()}
	if err := p.claimMetrics(); err != nil {
		return nil, err
	}
	p.start(ob, false)
	return &Relay{p: p}, nil
}

// Close stops sending anything new at once, waits for the confirms of what is in flight until
// ctx ends, then closes the connection and joins every goroutine. Whatever is not confirmed stays
// in the outbox, and is sent first by the next Relay on it. Idempotent, like Publisher.Close.
func (r *Relay) Close(ctx context.Context) error { return r.p.Close(ctx) }

// Stats returns the counters and connection state (Accepted and Journal stay zero).
func (r *Relay) Stats() Stats { return r.p.Stats() }

// State returns the current connection state.
func (r *Relay) State() State { return r.p.State() }

// Blocked reports whether the broker blocks the connection (a resource alarm).
func (r *Relay) Blocked() bool { return r.p.Blocked() }

// WaitReady waits until a session is up, as Publisher.WaitReady.
func (r *Relay) WaitReady(ctx context.Context) error { return r.p.WaitReady(ctx) }

// Flush waits until every entry up to the outbox's LastID at the time of the call is confirmed
// or parked, as Publisher.Flush.
func (r *Relay) Flush(ctx context.Context) error { return r.p.Flush(ctx) }
