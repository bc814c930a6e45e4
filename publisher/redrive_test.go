package publisher

import (
	"context"
	"errors"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/rabbitkit/rabbitkit/internal/testutil"
)

// An entry re-driven with journal.Redrive gets an ID that no Publish accepted. When it is parked
// again (its exchange is still missing), Flush must still return: the frontier follows the journal's
// LastID, not only what Publish accepted.
func TestFakeRedrivenParkedAgainFlush(t *testing.T) {
	p, f, _ := fakePublisher(t, func(c *Config) { c.MaxAttempts = 1 })
	rs := batch(t, p, 1)
	c := nextConn(t, f)
	ch := nextChan(t, c)
	recvPub(t, ch, time.Second)
	notFound := &amqp.Error{Code: amqp.NotFound, Reason: "NOT_FOUND - no exchange 'x' in vhost '/'", Server: true}
	ch.Fail(notFound)
	var pe *ParkedError
	if err := waitErr(t, rs[0]); !errors.As(err, &pe) {
		t.Fatalf("want parked, got %v", err)
	}
	ch2 := nextChan(t, c)
	if err := p.Journal().Redrive(context.Background(), rs[0].id); err != nil {
		t.Fatal(err)
	}
	recvPub(t, ch2, 2*time.Second)
	ch2.Fail(notFound) // parked again
	nextChan(t, c)
	testutil.Eventually(t, 2*time.Second, "parked again", func() bool {
		st := p.Journal().Stats()
		return st.Pending == 0 && st.Parked == 1
	})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if err := p.Flush(ctx); err != nil {
		t.Fatalf("Flush after the re-driven entry was parked again: %v", err)
	}
}
