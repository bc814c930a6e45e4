package publisher

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/rabbitkit/rabbitkit/internal/testbroker"
	"github.com/rabbitkit/rabbitkit/internal/testutil"
	"github.com/rabbitkit/rabbitkit/metrics"
)

func TestPublishConfirmed(t *testing.T) {
	url := testbroker.SharedURL(t)
	for _, qt := range []string{"classic", "quorum"} {
		t.Run(qt, func(t *testing.T) {
			s := newSetup(t, url, qt, nil)
			m := &metrics.Memory{}
			cfg := s.config(t, url, t.TempDir())
			cfg.Metrics = m
			p := mustNew(t, cfg)
			ctx := context.Background()
			l := newLedger()
			const n = 2000
			var wg sync.WaitGroup
			var mu sync.Mutex
			var receipts []*Receipt
			for g := range 4 {
				wg.Go(func() {
					for i := range n / 4 {
						r, err := p.Publish(ctx, Message{Exchange: s.exchange, RoutingKey: s.key, Stream: []string{"a", "b"}[g%2], Body: []byte{byte(i)}})
						if err != nil {
							t.Errorf("Publish: %v", err)
							return
						}
						mu.Lock()
						receipts = append(receipts, r)
						mu.Unlock()
						l.add(r.Stamp())
					}
				})
			}
			wg.Wait()
			flush(t, p, 30*time.Second)
			for _, r := range receipts {
				if err := waitErr(t, r); err != nil {
					t.Fatalf("receipt %s: %v", r.Stamp(), err)
				}
			}
			check(t, url, s.queue, l, checkOpts{})
			if got := m.Get(MetricConfirmed); got != n {
				t.Errorf("confirmed metric %v, want %d", got, n)
			}
			if st := p.Stats(); st.Accepted != n || st.Confirmed != n {
				t.Errorf("stats after flush: %+v", st)
			}
			testutil.Eventually(t, 5*time.Second, "journal empty", func() bool { return p.Stats().Journal.Pending == 0 })
		})
	}
}

func TestUnroutableParked(t *testing.T) {
	url := testbroker.SharedURL(t)
	s := newSetup(t, url, "classic", nil)
	cfg := s.config(t, url, t.TempDir())
	var mu sync.Mutex
	var parked []*ParkedError
	cfg.OnParked = func(pe *ParkedError) { mu.Lock(); parked = append(parked, pe); mu.Unlock() }
	p := mustNew(t, cfg)
	ctx := context.Background()
	l := newLedger()
	r1, err := p.Publish(ctx, Message{Exchange: s.exchange, RoutingKey: s.key, Body: []byte("ok")})
	if err != nil {
		t.Fatal(err)
	}
	l.add(r1.Stamp())
	bad, err := p.Publish(ctx, Message{Exchange: s.exchange, RoutingKey: "nowhere", Body: []byte("lost?")})
	if err != nil {
		t.Fatal(err)
	}
	r2, err := p.Publish(ctx, Message{Exchange: s.exchange, RoutingKey: s.key, Body: []byte("ok2")})
	if err != nil {
		t.Fatal(err)
	}
	l.add(r2.Stamp())
	wctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	err = bad.Wait(wctx)
	var pe *ParkedError
	if !errors.As(err, &pe) || !errors.Is(err, ErrUnroutable) || !errors.Is(err, ErrParked) {
		t.Fatalf("unroutable receipt: %v, want a *ParkedError wrapping ErrUnroutable", err)
	}
	if pe.ReplyCode != 312 || pe.Exchange != s.exchange || pe.RoutingKey != "nowhere" || pe.ReplyText == "" {
		t.Errorf("parked error %+v", pe)
	}
	if err := r2.Wait(wctx); err != nil {
		t.Fatalf("routable message after the unroutable one: %v", err)
	}
	// OnParked runs on the callback goroutine, after the receipt was settled.
	testutil.Eventually(t, 5*time.Second, "OnParked called", func() bool { mu.Lock(); defer mu.Unlock(); return len(parked) > 0 })
	mu.Lock()
	if len(parked) != 1 || parked[0].Seq != bad.Stamp().Seq {
		t.Errorf("OnParked got %v", parked)
	}
	mu.Unlock()
	testutil.Eventually(t, 5*time.Second, "journal: 1 parked, 0 pending", func() bool {
		st := p.Journal().Stats()
		return st.Parked == 1 && st.Pending == 0
	})
	check(t, url, s.queue, l, checkOpts{})
}
