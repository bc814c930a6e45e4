package publisher

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/rabbitkit/rabbitkit/internal/testutil"
)

// failingDeletes wraps an Outbox; while fail is set, every Delete fails (a database cut).
type failingDeletes struct {
	Outbox
	fail     atomic.Bool
	attempts atomic.Int64
}

var errDeleteCut = errors.New("delete: connection cut")

func (f *failingDeletes) Delete(ctx context.Context, ids ...uint64) error {
	f.attempts.Add(1)
	if f.fail.Load() {
		return errDeleteCut
	}
	return f.Outbox.Delete(ctx, ids...)
}

// A confirmed entry whose delete fails is retried by the deleter until it is gone, and a pass
// that starts over meanwhile (a reconnect) does not send it again.
func TestFakeFailedDeleteRetriedNeverResent(t *testing.T) {
	fd := &failingDeletes{}
	fd.fail.Store(true)
	p, f, m := fakePublisher(t, func(c *Config) { c.outbox = func(o Outbox) Outbox { fd.Outbox = o; return fd } })
	rs := batch(t, p, 6)
	c := nextConn(t, f)
	ch := nextChan(t, c)
	for range 6 {
		recvPub(t, ch, time.Second)
	}
	ch.ConfirmPublish(2, true, true, 1)
	for _, r := range rs[:2] {
		if err := waitErr(t, r); err != nil {
			t.Fatal(err)
		}
	}
	c.Fail(&amqp.Error{Code: amqp.ConnectionForced, Reason: "CONNECTION_FORCED"})
	ch2 := nextChan(t, nextConn(t, f))
	for i := range 4 {
		pb := recvPub(t, ch2, time.Second)
		if pb.Stamp.Seq != int64(i+3) {
			t.Fatalf("after reconnect: seq %d, want %d (a confirmed entry was resent)", pb.Stamp.Seq, i+3)
		}
	}
	// The sender counts a resend after the fake channel took the publish, so the test may see the
	// 4th publish first: wait for the count, and check below that it stays exactly 4.
	testutil.Eventually(t, 5*time.Second, "4 resends counted", func() bool { return m.Get(MetricResent) >= 4 })
	ch2.ConfirmPublish(4, true, true, 1)
	for _, r := range rs {
		if err := waitErr(t, r); err != nil {
			t.Fatal(err)
		}
	}
	testutil.Eventually(t, 15*time.Second, "failed delete attempts", func() bool { return fd.attempts.Load() >= 3 })
	if n := p.Journal().Backlog().Pending; n != 6 {
		t.Errorf("%d entries in the journal while deleting fails, want 6", n)
	}
	fd.fail.Store(false)
	testutil.Eventually(t, 15*time.Second, "every confirmed entry deleted", func() bool {
		return p.Journal().Backlog().Pending == 0
	})
	if got := m.Get(MetricResent); got != 4 {
		t.Errorf("resent %v, want 4 (the 2 confirmed entries must not be resent)", got)
	}
}

// Close with deletes failing gives up after deleteTimeout instead of hanging; the entries stay
// (the next Publisher resends them with their stamps).
func TestFakeCloseBoundsFailingDeletes(t *testing.T) {
	fd := &failingDeletes{}
	fd.fail.Store(true)
	p, f, _ := fakePublisher(t, func(c *Config) { c.outbox = func(o Outbox) Outbox { fd.Outbox = o; return fd } })
	rs := batch(t, p, 2)
	ch := nextChan(t, nextConn(t, f))
	recvPub(t, ch, time.Second)
	recvPub(t, ch, time.Second)
	ch.ConfirmPublish(2, true, true, 1)
	for _, r := range rs {
		if err := waitErr(t, r); err != nil {
			t.Fatal(err)
		}
	}
	began := time.Now()
	if err := p.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(began); d > deleteTimeout+2*time.Second {
		t.Errorf("Close took %v with deletes failing, want about %v at most", d, deleteTimeout)
	}
}
