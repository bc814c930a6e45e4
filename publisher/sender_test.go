package publisher

import (
	"context"
	"errors"
	"path/filepath"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/rabbitkit/rabbitkit/internal/testutil"
	"github.com/rabbitkit/rabbitkit/journal"
	"github.com/rabbitkit/rabbitkit/metrics"
)

func fakePublisher(t *testing.T, mod func(*Config)) (*Publisher, *fakeConnector, *metrics.Memory) {
	t.Helper()
	f := newFakeConnector()
	m := &metrics.Memory{}
	cfg := Config{dial: f, Source: "unit", JournalPath: filepath.Join(t.TempDir(), "j.db"), Logger: testLogger(t),
		MaxInFlight: 8, MaxAttempts: 3, ReconnectBackoff: testutil.FastBackoff, RetryBackoff: testutil.FastBackoff, Metrics: m}
	if mod != nil {
		mod(&cfg)
	}
	p := mustNew(t, cfg)
	t.Cleanup(func() { // after Close (cleanups run last-in first-out)
		if n := f.Misuse.Load(); n != 0 {
			t.Errorf("%d violations of hold/release: publish outside a hold, or unbalanced calls", n)
		}
	})
	return p, f, m
}

func batch(t *testing.T, p *Publisher, n int) []*Receipt {
	t.Helper()
	msgs := make([]Message, n)
	for i := range msgs {
		msgs[i] = Message{Exchange: "x", RoutingKey: "k", Body: []byte{byte(i)}}
	}
	rs, err := p.PublishBatch(context.Background(), msgs)
	if err != nil {
		t.Fatal(err)
	}
	return rs
}

func waitErr(t *testing.T, r *Receipt) error {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	err := r.Wait(ctx)
	if errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("receipt %s: no outcome", r.Stamp())
	}
	return err
}

// assertPending fails the test unless r has no outcome yet: Done open and Err nil (like context.Err).
func assertPending(t *testing.T, r *Receipt, what string) {
	t.Helper()
	select {
	case <-r.Done():
		t.Fatalf("%s: receipt %s has an outcome: %v", what, r.Stamp(), r.Err())
	default:
	}
	if err := r.Err(); err != nil {
		t.Fatalf("%s: Err() = %v while pending, want nil", what, err)
	}
}

func TestFakeWindowAndMultipleAcks(t *testing.T) {
	p, f, m := fakePublisher(t, nil)
	rs := batch(t, p, 10)
	ch := nextChan(t, nextConn(t, f))
	for i := range 8 {
		pb := recvPub(t, ch, time.Second)
		if pb.Tag != uint64(i+1) || pb.Stamp.Seq != int64(i+1) || !pb.Mandatory || pb.Msg.MessageId != pb.Stamp.String() || pb.Msg.Headers != nil ||
			pb.Msg.DeliveryMode != amqp.Persistent || pb.Stamp.Source != "unit" || pb.Stamp.Stream != "x/k" {
			t.Fatalf("publish %d: %+v", i, pb)
		}
	}
	noPub(t, ch, 100*time.Millisecond) // window of 8 full
	assertPending(t, rs[0], "receipt before confirm")
	ch.ConfirmPublish(5, true, true, 1) // multiple ack 1..5
	for i := 8; i < 10; i++ {
		if pb := recvPub(t, ch, time.Second); pb.Stamp.Seq != int64(i+1) {
			t.Fatalf("seq %d, want %d", pb.Stamp.Seq, i+1)
		}
	}
	for tag := uint64(6); tag <= 10; tag++ {
		ch.ConfirmPublish(tag, false, true, 0)
	}
	for _, r := range rs {
		if err := waitErr(t, r); err != nil {
			t.Fatalf("receipt %s: %v", r.Stamp(), err)
		}
	}
	flush(t, p, time.Second)
	testutil.Eventually(t, 2*time.Second, "journal empty", func() bool { return p.Journal().Stats().Pending == 0 })
	if m.Get(MetricConfirmed) != 10 || m.Get(MetricPublished) != 10 || m.Get(MetricResent) != 0 {
		t.Errorf("metrics %v", m.Snapshot())
	}
}

func TestFakeNackRetriedThenParked(t *testing.T) {
	p, f, m := fakePublisher(t, nil)
	rs := batch(t, p, 3)
	ch := nextChan(t, nextConn(t, f))
	for range 3 {
		recvPub(t, ch, time.Second)
	}
	ch.ConfirmPublish(1, false, true, 0)
	ch.ConfirmPublish(2, false, false, 0) // nack seq 2
	ch.ConfirmPublish(3, false, true, 0)
	if err := waitErr(t, rs[0]); err != nil {
		t.Fatal(err)
	}
	// seq 2 is resent alone (probe), after a backoff, on the same channel.
	pb := recvPub(t, ch, 2*time.Second)
	if pb.Stamp.Seq != 2 || pb.Tag != 4 {
		t.Fatalf("resend %+v, want seq 2 tag 4", pb)
	}
	es, err := p.Journal().Read(context.Background(), 0, 10)
	if err != nil || len(es) != 1 || es[0].Attempts != 1 || es[0].LastOutcome != journal.OutcomeNacked {
		t.Fatalf("journal after one nack: %v %+v", err, es)
	}
	assertPending(t, rs[2], "seq 3 settled before seq 2")
	ch.ConfirmPublish(4, false, false, 0)
	pb = recvPub(t, ch, 2*time.Second)
	ch.ConfirmPublish(pb.Tag, false, false, 0) // third nack: MaxAttempts 3
	err = waitErr(t, rs[1])
	var pe *ParkedError
	if !errors.As(err, &pe) || pe.Attempts != 3 || pe.Seq != 2 || errors.Is(err, ErrUnroutable) {
		t.Fatalf("nacked 3 times: %v", err)
	}
	if err := waitErr(t, rs[2]); err != nil {
		t.Fatalf("seq 3: %v", err)
	}
	noPub(t, ch, 100*time.Millisecond)
	if st := p.Stats(); st.Parked != 1 || st.Nacked != 3 || st.Confirmed != 2 {
		t.Errorf("stats %+v", st)
	}
	if m.Get(MetricParked) != 1 {
		t.Errorf("metrics %v", m.Snapshot())
	}
}

func TestFakeReturnParks(t *testing.T) {
	var rec recorder[*ParkedError]
	p, f, _ := fakePublisher(t, func(c *Config) { c.OnParked = rec.add })
	rs := batch(t, p, 2)
	ch := nextChan(t, nextConn(t, f))
	p1, _ := recvPub(t, ch, time.Second), recvPub(t, ch, time.Second)
	ch.ReturnPublish(p1) // a return precedes the (positive) ack of the same message
	ch.ConfirmPublish(2, true, true, 1)
	err := waitErr(t, rs[0])
	var pe *ParkedError
	if !errors.As(err, &pe) || !errors.Is(err, ErrUnroutable) || pe.ReplyCode != amqp.NoRoute || pe.Exchange != "x" || pe.RoutingKey != "k" {
		t.Fatalf("returned: %v", err)
	}
	if err := waitErr(t, rs[1]); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 2*time.Second, "OnParked called", func() bool { return len(rec.get()) > 0 })
	if parked := rec.get(); len(parked) != 1 || parked[0].Seq != 1 {
		t.Errorf("OnParked: %v", parked)
	}
	testutil.Eventually(t, 2*time.Second, "1 parked 0 pending", func() bool {
		st := p.Journal().Stats()
		return st.Parked == 1 && st.Pending == 0
	})
}

func TestFakeConnectionLostResendsInOrder(t *testing.T) {
	p, f, m := fakePublisher(t, func(c *Config) { c.ReadBatch = 2 })
	rs := batch(t, p, 6)
	c := nextConn(t, f)
	ch := nextChan(t, c)
	for range 6 {
		recvPub(t, ch, time.Second)
	}
	ch.ConfirmPublish(2, true, true, 1)
	// The sender must have taken the confirms before the connection fails: confirms and the close
	// notification are separate channels, and a confirm not yet read when the connection dies is
	// rightly treated as unknown (resent).
	for _, r := range rs[:2] {
		if err := waitErr(t, r); err != nil {
			t.Fatal(err)
		}
	}
	c.Fail(&amqp.Error{Code: amqp.ConnectionForced, Reason: "CONNECTION_FORCED"})
	c2 := nextConn(t, f)
	ch2 := nextChan(t, c2)
	for i := range 4 {
		pb := recvPub(t, ch2, time.Second)
		if pb.Tag != uint64(i+1) || pb.Stamp.Seq != int64(i+3) {
			t.Fatalf("after reconnect: tag %d seq %d, want tag %d seq %d", pb.Tag, pb.Stamp.Seq, i+1, i+3)
		}
	}
	assertPending(t, rs[2], "unknown must not be an outcome")
	ch2.ConfirmPublish(4, true, true, 1)
	for _, r := range rs {
		if err := waitErr(t, r); err != nil {
			t.Fatal(err)
		}
	}
	if m.Get(MetricUnknown) != 4 || m.Get(MetricResent) != 4 || m.Get(MetricReconnects) != 1 {
		t.Errorf("metrics %v", m.Snapshot())
	}
}

func TestFakeChannelErrorProbesAndCharges(t *testing.T) {
	p, f, m := fakePublisher(t, nil)
	rs := batch(t, p, 3)
	c := nextConn(t, f)
	ch := nextChan(t, c)
	for range 3 {
		recvPub(t, ch, time.Second)
	}
	notFound := &amqp.Error{Code: amqp.NotFound, Reason: "NOT_FOUND - no exchange 'x' in vhost '/'", Server: true}
	ch.Fail(notFound) // three in flight: the culprit is unknown, nothing charged
	ch2 := nextChan(t, c)
	pb := recvPub(t, ch2, 2*time.Second)
	if pb.Stamp.Seq != 1 {
		t.Fatalf("probe sends seq %d first", pb.Stamp.Seq)
	}
	noPub(t, ch2, 100*time.Millisecond) // one at a time
	ch2.Fail(notFound)                  // alone in flight: seq 1 is the culprit
	ch3 := nextChan(t, c)
	recvPub(t, ch3, 2*time.Second)
	es, _ := p.Journal().Read(context.Background(), 0, 10)
	if len(es) != 3 || es[0].Attempts != 1 || es[0].LastOutcome != journal.OutcomeChannelError || es[1].Attempts != 0 {
		t.Fatalf("journal: %+v", es)
	}
	ch3.ConfirmPublish(1, false, true, 0)
	for i := 2; i <= 3; i++ {
		pb := recvPub(t, ch3, time.Second)
		ch3.ConfirmPublish(pb.Tag, false, true, 0)
	}
	for _, r := range rs {
		if err := waitErr(t, r); err != nil {
			t.Fatal(err)
		}
	}
	if m.Get(MetricChannelErrors) != 2 || m.Get(MetricReconnects) != 0 {
		t.Errorf("metrics %v", m.Snapshot())
	}
}

func TestFakeBlocked(t *testing.T) {
	var rec recorder[State]
	p, f, m := fakePublisher(t, func(c *Config) { c.OnStateChange = func(sc StateChange) { rec.add(sc.To) } })
	c := nextConn(t, f)
	ch := nextChan(t, c)
	c.Block(amqp.Blocking{Active: true, Reason: "memory"})
	testutil.Eventually(t, time.Second, "blocked", p.Blocked)
	holds := c.Holds()
	rs := batch(t, p, 3)
	noPub(t, ch, 200*time.Millisecond)
	if n := c.Holds() - holds; n != 0 {
		t.Errorf("%d holds of the socket's writes while blocked", n)
	}
	if st := p.Stats(); st.State != StateBlocked || m.Get(MetricBlocked) != 1 {
		t.Fatalf("stats %+v", st)
	}
	unblockAndConfirm(t, c, ch, rs)
	if p.Blocked() || p.State() != StateReady {
		t.Errorf("after unblock: blocked %v state %v", p.Blocked(), p.State())
	}
	want := []State{StateReady, StateBlocked, StateReady}
	testutil.Eventually(t, 2*time.Second, "three state changes", func() bool { return len(rec.get()) >= 3 })
	states := rec.get()
	if len(states) < 3 || states[0] != want[0] || states[1] != want[1] || states[2] != want[2] {
		t.Errorf("state changes %v, want prefix %v", states, want)
	}
}

// TestFakeBlockedAtOpen: a connection opened during a broker alarm carries connection.blocked from
// the start; the sender must not write a single publish (which would block in the socket, not
// visibly blocked) until connection.unblocked.
func TestFakeBlockedAtOpen(t *testing.T) {
	p, f, _ := fakePublisher(t, func(c *Config) {
		c.dial.(*fakeConnector).Down.Store(true) // no connection yet
		c.dial.(*fakeConnector).BlockedAtOpen.Store(true)
	})
	rs := batch(t, p, 3) // journaled first: the session has them to send at once
	f.Down.Store(false)
	c := nextConn(t, f)
	ch := nextChan(t, c)
	testutil.Eventually(t, time.Second, "blocked", p.Blocked)
	noPub(t, ch, 200*time.Millisecond)
	if n := c.Holds(); n != 0 {
		t.Errorf("%d holds of the socket's writes while blocked", n)
	}
	unblockAndConfirm(t, c, ch, rs)
}

// unblockAndConfirm sends connection.unblocked, then expects and confirms one publish per receipt.
func unblockAndConfirm(t *testing.T, c *fakeConn, ch *fakeChan, rs []*Receipt) {
	t.Helper()
	c.Block(amqp.Blocking{Active: false})
	for range rs {
		pb := recvPub(t, ch, time.Second)
		ch.ConfirmPublish(pb.Tag, false, true, 0)
	}
	if err := waitErr(t, rs[len(rs)-1]); err != nil {
		t.Fatal(err)
	}
}

func TestFakeCloseLeavesUnconfirmedJournaled(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "j.db")
	p, f, _ := fakePublisher(t, func(c *Config) { c.JournalPath = path })
	rs := batch(t, p, 3)
	ch := nextChan(t, nextConn(t, f))
	for range 3 {
		recvPub(t, ch, time.Second)
	}
	ch.ConfirmPublish(1, false, true, 0)
	if err := waitErr(t, rs[0]); err != nil { // taken by the sender before Close begins
		t.Fatalf("confirmed before close: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	if err := p.Close(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Close with unconfirmed in flight: %v", err)
	}
	if err := p.Close(context.Background()); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("second Close returns the first result, got %v", err)
	}
	if _, err := p.Publish(context.Background(), Message{Exchange: "x"}); !errors.Is(err, ErrClosed) {
		t.Fatalf("Publish after Close: %v", err)
	}
	if err := waitErr(t, rs[0]); err != nil {
		t.Fatalf("confirmed before close: %v", err)
	}
	if err := waitErr(t, rs[1]); !errors.Is(err, ErrUnconfirmed) {
		t.Fatalf("unconfirmed at close: %v", err)
	}
	j := openJournal(t, path, "unit")
	defer j.Close()
	if st := j.Stats(); st.Pending != 2 {
		t.Fatalf("pending after close %d, want 2", st.Pending)
	}
}

func TestFakePublishHonoursContext(t *testing.T) {
	p, f, _ := fakePublisher(t, nil)
	_ = f
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	r, err := p.Publish(ctx, Message{Exchange: "x", RoutingKey: "k"})
	// Either it was journaled before the cancellation was seen, or the error says what happened.
	if err != nil && !errors.Is(err, context.Canceled) {
		t.Fatalf("Publish with a cancelled ctx: %v", err)
	}
	if err != nil && !errors.Is(err, ErrAcceptUnknown) && r.Err() == nil {
		t.Fatalf("withdrawn message reports success")
	}
	if _, err := p.Publish(context.Background(), Message{Headers: amqp.Table{"bad": uint64(1)}}); !errors.Is(err, ErrInvalidMessage) {
		t.Fatalf("invalid header: %v", err)
	}
	cctx, ccancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer ccancel()
	_ = p.Close(cctx) // nobody confirms: Close gives up after its ctx
}

func TestWindow(t *testing.T) {
	w := newWindow(4)
	for i := range 4 {
		w.push(&journal.Entry{ID: uint64(i + 1), Stream: "s", Seq: int64(i + 1)}, time.Now())
	}
	tests := []struct {
		name          string
		tag           uint64
		multiple, ack bool
		wantErr       bool
	}{
		{"unknown tag", 9, false, true, true},
		{"zero tag", 0, false, true, true},
		{"ack 2", 2, false, true, false},
		{"ack 2 twice", 2, false, true, true},
		{"multiple nack to 3", 3, true, false, false},
	}
	for _, tc := range tests {
		if err := w.confirm(tc.tag, tc.multiple, tc.ack); (err != nil) != tc.wantErr {
			t.Errorf("%s: err %v", tc.name, err)
		}
	}
	// 1 nacked (multiple), 2 acked (kept), 3 nacked, 4 waiting
	want := []flightState{flightNacked, flightAcked, flightNacked}
	for i, st := range want {
		f, ok := w.pop()
		if !ok || f.state != st || f.e.Seq != int64(i+1) {
			t.Fatalf("pop %d: %+v %v", i, f, ok)
		}
	}
	if _, ok := w.pop(); ok || w.len() != 1 || w.minID() != 4 {
		t.Fatalf("head must wait: len %d", w.len())
	}
	if !w.markReturned("s", 4, &amqp.Return{}) || w.markReturned("s", 3, &amqp.Return{}) {
		t.Error("markReturned")
	}
}

// A callback that blocks delays only other callbacks: messages are still sent and confirmed.
func TestFakeSlowCallbackDoesNotBlockSending(t *testing.T) {
	release := make(chan struct{})
	p, f, _ := fakePublisher(t, func(c *Config) { c.OnStateChange = func(StateChange) { <-release } })
	t.Cleanup(func() { close(release) }) // before the Publisher's Close, which waits for callbacks
	rs := batch(t, p, 3)
	ch := nextChan(t, nextConn(t, f))
	for range 3 {
		recvPub(t, ch, time.Second)
	}
	ch.ConfirmPublish(3, true, true, 1)
	for _, r := range rs {
		if err := waitErr(t, r); err != nil {
			t.Fatal(err)
		}
	}
}
