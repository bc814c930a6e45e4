package publisher

import (
	"testing"
	"time"

	"github.com/rabbitkit/rabbitkit/internal/amqpseam/amqpfake"
)

// The unit tests run the sender on the shared in-process fake (internal/amqpseam/amqpfake), in
// which the test goroutine plays the broker: it reads publishes and answers with confirms, returns
// and closes. These are the publisher tests' names for it.

type (
	fakeConnector = amqpfake.Dialer
	fakeConn      = amqpfake.Conn
	fakeChan      = amqpfake.Channel
	fakePub       = amqpfake.Pub
)

// newFakeConnector returns a fake broker that counts, in Misuse, every violation of the sender's
// write-batching contract: a publish outside a hold, a hold while held, a release while not held.
func newFakeConnector() *fakeConnector {
	d := amqpfake.New()
	d.RequireHold = true
	return d
}

// recvPub reads the next publish, failing the test after d.
func recvPub(t *testing.T, ch *fakeChan, d time.Duration) fakePub {
	t.Helper()
	return ch.NextPub(t, d)
}

// noPub asserts nothing is published for d.
func noPub(t *testing.T, ch *fakeChan, d time.Duration) { t.Helper(); ch.NoPub(t, d) }

// nextConn returns the next connection dialled.
func nextConn(t *testing.T, f *fakeConnector) *fakeConn { t.Helper(); return f.NextConn(t) }

// nextChan returns c's next channel whose topology was declared.
func nextChan(t *testing.T, c *fakeConn) *fakeChan { t.Helper(); return c.NextChan(t) }
