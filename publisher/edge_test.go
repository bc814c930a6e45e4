package publisher

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/rabbitkit/rabbitkit/internal/testbroker"
	"github.com/rabbitkit/rabbitkit/internal/testutil"
	"github.com/rabbitkit/rabbitkit/journal"
)

// Flush on a new Publisher waits for the backlog a previous Publisher left in the journal, even when
// nothing new was published.
func TestFlushCoversPreviousBacklog(t *testing.T) {
	url := testbroker.SharedURL(t)
	s := newSetup(t, url, "classic", nil)
	declare(t, url, s)
	dir := t.TempDir()
	offline := s.config(t, "amqp://guest:guest@127.0.0.1:1/", dir) // nothing listens there
	p1 := mustNew(t, offline)
	ctx := context.Background()
	l := newLedger()
	const n = 300
	for i := range n {
		r, err := p1.Publish(ctx, Message{Exchange: s.exchange, RoutingKey: s.key, Body: []byte{byte(i)}})
		if err != nil {
			t.Fatal(err)
		}
		l.add(r.Stamp())
	}
	closeCtx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if err := p1.Close(closeCtx); err != nil {
		t.Fatal(err)
	}

	p2 := mustNew(t, s.config(t, url, dir))
	flush(t, p2, 30*time.Second)
	if st := p2.Stats(); st.Confirmed != n {
		t.Fatalf("Flush returned with %d of the %d journaled messages confirmed", st.Confirmed, n)
	}
	if r := check(t, url, s.queue, l, checkOpts{}); r.arrivals != n {
		t.Fatalf("%d arrivals, want %d", r.arrivals, n)
	}
}

// TryPublish fails at once with ErrBufferFull when MaxBuffered messages already wait for the journal
// (here: a full journal and no broker), and loses nothing it accepted.
func TestTryPublishBufferFull(t *testing.T) {
	url := testbroker.SharedURL(t)
	px := testbroker.NewProxy(t, url)
	s := newSetup(t, url, "classic", nil)
	declare(t, url, s)
	cfg := s.config(t, px.URL, t.TempDir())
	cfg.MaxBuffered = 4
	cfg.JournalOptions = journal.Options{MaxEntries: 10}
	px.Down(t)
	p := mustNew(t, cfg)
	ctx := context.Background()
	l := newLedger()
	var receipts []*Receipt
	for i := range 10 { // fills the journal
		r, err := p.Publish(ctx, Message{Exchange: s.exchange, RoutingKey: s.key, Body: []byte{byte(i)}})
		if err != nil {
			t.Fatal(err)
		}
		l.add(r.Stamp())
		receipts = append(receipts, r)
	}
	var queued []*Receipt
	full := false
	for i := range 50 {
		r, err := p.TryPublish(Message{Exchange: s.exchange, RoutingKey: s.key, Body: []byte{byte(i)}})
		if errors.Is(err, ErrBufferFull) {
			full = true
			if r.Err() == nil || !errors.Is(r.Err(), ErrBufferFull) {
				t.Fatalf("receipt of a refused message: %v", r.Err())
			}
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		queued = append(queued, r)
	}
	if !full {
		t.Fatal("TryPublish never reported ErrBufferFull")
	}
	// At most MaxBuffered wait in the buffer, plus the batch the appender holds.
	if len(queued) > cfg.MaxBuffered+maxAppendBatch {
		t.Fatalf("%d messages queued before ErrBufferFull", len(queued))
	}
	px.Up(t) // the broker drains the journal, the appender gets room, the buffer empties
	for _, r := range queued {
		wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		err := r.WaitJournaled(wctx)
		cancel()
		if err != nil {
			t.Fatalf("queued message never journaled: %v", err)
		}
		l.add(r.Stamp())
	}
	flush(t, p, 30*time.Second)
	for _, r := range append(receipts, queued...) {
		if err := waitErr(t, r); err != nil {
			t.Fatalf("receipt %s: %v", r.Stamp(), err)
		}
	}
	if r := check(t, url, s.queue, l, checkOpts{}); r.arrivals != 10+len(queued) {
		t.Fatalf("%d arrivals, want %d", r.arrivals, 10+len(queued))
	}
}

// With several URLs the publisher connects to the first that answers and, when that connection
// dies, fails over to another; nothing is lost or reordered on the way.
func TestFailoverAcrossURLs(t *testing.T) {
	url := testbroker.SharedURL(t)
	pxA, pxB := testbroker.NewProxy(t, url), testbroker.NewProxy(t, url)
	s := newSetup(t, url, "classic", nil)
	declare(t, url, s)
	cfg := s.config(t, pxA.URL, t.TempDir())
	cfg.URLs = []string{pxA.URL, pxB.URL}
	pxA.Down(t)
	p := mustNew(t, cfg)
	ctx := context.Background()
	l := newLedger()
	publish := func(n int) {
		for i := range n {
			r, err := p.Publish(ctx, Message{Exchange: s.exchange, RoutingKey: s.key, Body: []byte{byte(i)}})
			if err != nil {
				t.Fatal(err)
			}
			l.add(r.Stamp())
		}
	}
	portOf := func(u string) string { return u[strings.LastIndexByte(u, ':'):] }
	publish(200)
	flush(t, p, 30*time.Second)
	if got := p.Stats().URL; !strings.Contains(got, portOf(pxB.URL)) {
		t.Fatalf("connected to %s, want the second URL %s (the first is down)", got, pxB.URL)
	}
	pxA.Up(t)
	pxB.Down(t) // cuts the live connection and refuses new ones
	publish(200)
	flush(t, p, 30*time.Second)
	if got := p.Stats().URL; !strings.Contains(got, portOf(pxA.URL)) {
		t.Fatalf("connected to %s after the second URL died, want the first %s", got, pxA.URL)
	}
	if r := check(t, url, s.queue, l, checkOpts{}); r.arrivals < 400 {
		t.Fatalf("%d arrivals, want 400", r.arrivals)
	}
}

// Flush on a new Publisher whose journal holds nothing pending returns at once, even while the
// broker is unreachable: everything up to the journal's LastID is settled.
func TestFlushNothingPendingOffline(t *testing.T) {
	url := testbroker.SharedURL(t)
	s := newSetup(t, url, "classic", nil)
	declare(t, url, s)
	dir := t.TempDir()
	p1 := mustNew(t, s.config(t, url, dir))
	for i := range 5 {
		if _, err := p1.Publish(context.Background(), Message{Exchange: s.exchange, RoutingKey: s.key, Body: []byte{byte(i)}}); err != nil {
			t.Fatal(err)
		}
	}
	flush(t, p1, 30*time.Second)
	testutil.Eventually(t, 10*time.Second, "journal empty", func() bool { return p1.Stats().Journal.Pending == 0 })
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := p1.Close(ctx); err != nil {
		t.Fatal(err)
	}

	p2 := mustNew(t, s.config(t, "amqp://guest:guest@127.0.0.1:1/", dir))
	fctx, fcancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer fcancel()
	start := time.Now()
	if err := p2.Flush(fctx); err != nil {
		t.Fatalf("Flush with nothing pending, broker unreachable: %v", err)
	}
	if d := time.Since(start); d > 500*time.Millisecond {
		t.Errorf("Flush took %v with nothing pending", d)
	}
}
