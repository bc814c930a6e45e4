package publisher

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/rabbitkit/rabbitkit/internal/testutil"
)

// A message returned as unroutable (basic.return, then basic.ack) whose parking fails stays pending:
// its receipt is not confirmed, the frontier (receipts, Flush) stays below it even though a later
// message is acked, and it is sent again on the same channel. Once parking succeeds it is parked and
// reported, and Flush returns.
func TestFakeReturnedParkFailureHoldsFrontierAndResends(t *testing.T) {
	var parkCalls atomic.Int32
	var mu sync.Mutex
	var parked []*ParkedError
	p, f, m := fakePublisher(t, func(c *Config) {
		c.outbox = func(o Outbox) Outbox { return &failingPark{Outbox: o, calls: &parkCalls} }
		c.OnParked = func(pe *ParkedError) {
			mu.Lock()
			defer mu.Unlock()
			parked = append(parked, pe)
		}
	})
	rs := batch(t, p, 3)
	ch := nextChan(t, nextConn(t, f))
	pubs := make([]fakePub, 3)
	for i := range pubs {
		if pubs[i] = recvPub(t, ch, time.Second); pubs[i].Stamp.Seq != int64(i+1) {
			t.Fatalf("publish %d: seq %d", i, pubs[i].Stamp.Seq)
		}
	}
	// Seq 2 is returned, then all three are acked: parking seq 2 fails.
	ch.ReturnPublish(pubs[1])
	ch.ConfirmPublish(3, true, true, 1)
	if err := waitErr(t, rs[0]); err != nil {
		t.Fatalf("seq 1: %v", err)
	}
	testutil.Eventually(t, 2*time.Second, "first park attempt", func() bool { return parkCalls.Load() >= 1 })

	// Seq 2 must be sent again (a new pass from it, after the retry backoff), and must not be
	// reported settled meanwhile.
	var resend fakePub
	select {
	case <-rs[1].Done():
		t.Fatalf("seq 2 settled although its parking failed: Err() = %v (frontier passed its ID)", rs[1].Err())
	case resend = <-ch.Pubs():
	case <-time.After(3 * time.Second):
		t.Fatalf("seq 2 not resent after its parking failed (stats %+v)", p.Stats())
	}
	if resend.Stamp.Seq != 2 || resend.Tag != 4 {
		t.Fatalf("resend seq %d tag %d, want seq 2 tag 4 on the same channel", resend.Stamp.Seq, resend.Tag)
	}
	noPub(t, ch, 100*time.Millisecond) // seq 3 was acked and deleted: only seq 2 is resent
	assertPending(t, rs[1], "seq 2 while pending")
	assertPending(t, rs[2], "seq 3 (acked) must wait behind pending seq 2")
	ctx, cancel := context.WithTimeout(context.Background(), 150*time.Millisecond)
	err := p.Flush(ctx)
	cancel()
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Flush with seq 2 pending: %v, want a deadline", err)
	}
	if st := p.Journal().Stats(); st.Pending != 1 || st.Parked != 0 {
		t.Fatalf("journal after failed park: pending %d parked %d, want 1 0", st.Pending, st.Parked)
	}
	mu.Lock()
	n := len(parked)
	mu.Unlock()
	if n != 0 || m.Get(MetricParked) != 0 {
		t.Fatalf("reported parked although parking failed: OnParked %d, metric %v", n, m.Get(MetricParked))
	}

	// Returned again, parking succeeds: parked and reported, and everything settles.
	ch.ReturnPublish(resend)
	ch.ConfirmPublish(resend.Tag, false, true, 0)
	err = waitErr(t, rs[1])
	var pe *ParkedError
	if !errors.As(err, &pe) || !pe.Returned || !errors.Is(err, ErrUnroutable) || pe.Seq != 2 || pe.ReplyCode != amqp.NoRoute {
		t.Fatalf("seq 2 after parking: %v", err)
	}
	if err := waitErr(t, rs[2]); err != nil {
		t.Fatalf("seq 3: %v", err)
	}
	flush(t, p, 2*time.Second)
	if c := parkCalls.Load(); c != 2 {
		t.Errorf("park attempts %d, want 2", c)
	}
	testutil.Eventually(t, 2*time.Second, "OnParked called", func() bool { mu.Lock(); defer mu.Unlock(); return len(parked) > 0 })
	mu.Lock()
	if len(parked) != 1 || parked[0].Seq != 2 || !parked[0].Returned {
		t.Errorf("OnParked: %v", parked)
	}
	mu.Unlock()
	testutil.Eventually(t, 2*time.Second, "1 parked 0 pending", func() bool {
		st := p.Journal().Stats()
		return st.Parked == 1 && st.Pending == 0
	})
	noPub(t, ch, 100*time.Millisecond)
	if m.Get(MetricParked) != 1 || m.Get(MetricReconnects) != 0 {
		t.Errorf("metrics %v", m.Snapshot())
	}
	closeCtx, cancelClose := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancelClose()
	if err := p.Close(closeCtx); err != nil {
		t.Fatalf("Close: %v", err)
	}
}

// failingPark is an outbox whose first Park fails.
type failingPark struct {
	Outbox
	calls *atomic.Int32
}

func (f *failingPark) Park(ctx context.Context, id uint64, reason string) error {
	if f.calls.Add(1) == 1 {
		return errors.New("injected: park failed")
	}
	return f.Outbox.Park(ctx, id, reason)
}
