package publisher

// Readiness and the last connection error (amqpconn.Status, shared with the consumer): connection
// problems visible in code, not only in logs.

import (
	"context"
	"fmt"
)

// WaitReady waits until a session is up: connected, the channel in confirm mode, the topology
// declared (StateReady; StateBlocked counts too: the session is up, the broker holds publishing
// back). It returns nil then, and at once if a session is up already. It returns ErrClosed once
// Close has begun. When ctx ends first it returns ctx's error together with the last connection
// error (errors.Is and errors.As see both), so that a wrong password, a TLS failure or a refused
// vhost is told in code:
//
//	publisher: not ready: context deadline exceeded; last error: amqpconn: dial amqp://guest:xxxxx@host:5672/: Exception (403) Reason: "username or password not allowed"
//
// Publish never needs it (it journals while the broker is unreachable): use it at start-up to fail
// fast on a configuration that cannot connect, or in a readiness probe.
func (p *Publisher) WaitReady(ctx context.Context) error {
	select {
	case <-p.closing:
		return ErrClosed
	default:
	}
	select {
	case <-p.status.Ready():
		return nil
	case <-p.closing:
		return ErrClosed
	case <-ctx.Done():
		if last := p.status.Snapshot().LastErr; last != nil {
			return fmt.Errorf("publisher: not ready: %w; last error: %w", ctx.Err(), last)
		}
		return fmt.Errorf("publisher: not ready: %w", ctx.Err())
	}
}
