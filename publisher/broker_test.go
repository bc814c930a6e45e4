package publisher

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/rabbitkit/rabbitkit/internal/testbroker"
	"github.com/rabbitkit/rabbitkit/internal/testutil"
	"github.com/rabbitkit/rabbitkit/journal"
	"github.com/rabbitkit/rabbitkit/metrics"
	"github.com/rabbitkit/rabbitkit/topology"
)

// TestPrivateNode restarts, kills and alarms a private RabbitMQ node (never the shared one) while
// publishing. One node serves the subtests, in order.
func TestPrivateNode(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a private RabbitMQ node")
	}
	node := testbroker.StartNode(t)
	tests := []struct {
		name  string
		qtype string
		fault func(t *testing.T, p *Publisher, pr *publisherRun)
	}{
		{"graceful-restart", "quorum", func(t *testing.T, p *Publisher, pr *publisherRun) {
			pr.waitAccepted(t, 300)
			node.Restart(t)
		}},
		{"kill-9", "classic", func(t *testing.T, p *Publisher, pr *publisherRun) {
			pr.waitAccepted(t, 300)
			node.Kill(t)
			time.Sleep(time.Second)
			node.Start(t)
		}},
		{"memory-alarm", "classic", func(t *testing.T, p *Publisher, pr *publisherRun) {
			pr.waitAccepted(t, 300)
			node.SetMemoryHighWatermark(t, 0.0000001)
			testutil.Eventually(t, 20*time.Second, "publisher blocked", p.Blocked)
			if st := p.Stats(); st.State != StateBlocked || !st.Blocked {
				t.Errorf("stats while blocked: %+v", st)
			}
			n := pr.l.count()
			time.Sleep(time.Second)
			if pr.l.count() <= n {
				t.Errorf("Publish stopped accepting while the broker was blocked")
			}
			node.SetMemoryHighWatermark(t, 0.4)
			testutil.Eventually(t, 20*time.Second, "publisher unblocked", func() bool { return !p.Blocked() })
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s := newSetup(t, node.URL, tc.qtype, nil)
			m := &metrics.Memory{}
			cfg := s.config(t, node.URL, t.TempDir())
			cfg.Metrics = m
			p := mustNew(t, cfg)
			pr := startPublishing(p, s, 1200, 3*time.Millisecond)
			tc.fault(t, p, pr)
			pr.wait(t)
			flush(t, p, 90*time.Second)
			check(t, node.URL, s.queue, pr.l, checkOpts{})
			t.Logf("metrics: reconnects %v, resent %v, unknown %v, blocked %v", m.Get(MetricReconnects), m.Get(MetricResent), m.Get(MetricUnknown), m.Get(MetricBlocked))
		})
	}

	// A publisher that connects while the alarm is already raised: RabbitMQ blocks the connection
	// from the start; the publisher says so, sends nothing, and delivers its backlog once the alarm
	// clears. (That it takes the notification before its first write is pinned by
	// TestFakeBlockedAtOpen: against a broker a small first write lands in socket buffers either way.)
	t.Run("opened-under-alarm", func(t *testing.T) {
		s := newSetup(t, node.URL, "classic", nil)
		declare(t, node.URL, s) // declaring works under an alarm; only publishing is blocked
		node.SetMemoryHighWatermark(t, 0.0000001)
		t.Cleanup(func() { node.SetMemoryHighWatermark(t, 0.4) })
		cfg := s.config(t, node.URL, t.TempDir())
		p := mustNew(t, cfg)
		pr := startPublishing(p, s, 50, 0)
		pr.wait(t)
		testutil.Eventually(t, 20*time.Second, "publisher blocked from the start", p.Blocked)
		if st := p.Stats(); st.State != StateBlocked || st.Confirmed != 0 {
			t.Fatalf("stats under the alarm: %+v", st)
		}
		node.SetMemoryHighWatermark(t, 0.4)
		flush(t, p, 60*time.Second)
		check(t, node.URL, s.queue, pr.l, checkOpts{})
	})
}

// TestRejectPublish: a queue with x-overflow reject-publish at its limit nacks; nacks are retried
// with backoff and nothing is dropped once a consumer drains the queue. A nack inside a pipelined
// window can let later messages of the window in first, so first arrivals are not checked for order.
func TestRejectPublish(t *testing.T) {
	url := testbroker.SharedURL(t)
	s := newSetup(t, url, "classic", amqp.Table{"x-max-length": int32(100), "x-overflow": "reject-publish"})
	m := &metrics.Memory{}
	cfg := s.config(t, url, t.TempDir())
	cfg.Metrics = m
	p := mustNew(t, cfg)
	l := newLedger()
	publishBatch(t, p, s, l, 600)
	testutil.Eventually(t, 20*time.Second, "nacks", func() bool { return m.Get(MetricNacked) > 0 })
	time.Sleep(500 * time.Millisecond) // several rounds of nacks while the queue stays full
	if st := p.Stats(); st.Parked != 0 || st.Nacked == 0 {
		t.Fatalf("stats while full: %+v", st)
	}
	check(t, url, s.queue, l, checkOpts{unordered: true}) // consuming makes room
	flush(t, p, 30*time.Second)
	if st := p.Stats(); st.Parked != 0 || st.Confirmed != 600 {
		t.Errorf("stats after drain: %+v", st)
	}
	t.Logf("nacked %v, resent %v", m.Get(MetricNacked), m.Get(MetricResent))
}

// TestMissingExchange: publishing to an exchange that does not exist closes the channel with 404.
// The publisher reopens the channel with backoff (no hot loop) and, once the exchange exists,
// delivers everything; with a small MaxAttempts the message is parked and reported instead.
func TestMissingExchange(t *testing.T) {
	url := testbroker.SharedURL(t)
	t.Run("appears-later", func(t *testing.T) {
		s := newSetup(t, url, "classic", nil)
		m := &metrics.Memory{}
		cfg := s.config(t, url, t.TempDir())
		cfg.Topology = topology.Topology{} // nothing declared by the publisher
		cfg.Metrics = m
		p := mustNew(t, cfg)
		l := newLedger()
		publishBatch(t, p, s, l, 200)
		testutil.Eventually(t, 20*time.Second, "channel errors", func() bool { return m.Get(MetricChannelErrors) >= 3 })
		time.Sleep(time.Second)
		if n := m.Get(MetricChannelErrors); n > 40 {
			t.Errorf("%v channel errors in about a second: hot loop", n)
		}
		declare(t, url, s)
		flush(t, p, 30*time.Second)
		if st := p.Stats(); st.Parked != 0 {
			t.Errorf("parked %d", st.Parked)
		}
		check(t, url, s.queue, l, checkOpts{})
	})
	t.Run("parked", func(t *testing.T) {
		s := newSetup(t, url, "classic", nil)
		cfg := s.config(t, url, t.TempDir())
		cfg.MaxAttempts = 3
		parked := make(chan *ParkedError, 10)
		cfg.OnParked = func(pe *ParkedError) { parked <- pe }
		p := mustNew(t, cfg)
		l := newLedger()
		ok1, err := p.Publish(context.Background(), Message{Exchange: s.exchange, RoutingKey: s.key, Body: []byte("1")})
		if err != nil {
			t.Fatal(err)
		}
		l.add(ok1.Stamp())
		bad, err := p.Publish(context.Background(), Message{Exchange: s.exchange + "-missing", RoutingKey: s.key, Stream: ok1.Stamp().Stream, Body: []byte("2")})
		if err != nil {
			t.Fatal(err)
		}
		ok3, err := p.Publish(context.Background(), Message{Exchange: s.exchange, RoutingKey: s.key, Body: []byte("3")})
		if err != nil {
			t.Fatal(err)
		}
		l.add(ok3.Stamp())
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		err = bad.Wait(ctx)
		var pe *ParkedError
		if !errors.As(err, &pe) || pe.ReplyCode != 404 || pe.Attempts != 3 || errors.Is(err, ErrUnroutable) {
			t.Fatalf("missing exchange outcome %v (%+v), want parked after 3 attempts with 404", err, pe)
		}
		if got := <-parked; got.Seq != bad.Stamp().Seq {
			t.Errorf("OnParked %+v", got)
		}
		if err := ok3.Wait(ctx); err != nil {
			t.Fatal(err)
		}
		check(t, url, s.queue, l, checkOpts{skip: map[string]map[int64]bool{bad.Stamp().Stream: {bad.Stamp().Seq: true}}})
	})
}

// TestMissingExchangeMany: messages to an exchange that refuses them, a missing one (404) or one
// this user may not write to (403), are parked at their first refusal once the exchange has
// refused for MissingExchangeGrace, with the default MaxAttempts and RetryBackoff; the messages
// around them are delivered.
func TestMissingExchangeMany(t *testing.T) {
	for _, tc := range []struct {
		name string
		code int
	}{{"missing", 404}, {"write-refused", 403}} {
		t.Run(tc.name, func(t *testing.T) {
			url := testbroker.SharedURL(t)
			s := newSetup(t, url, "classic", nil)
			badX := s.exchange + "-missing"
			pubURL := url
			if tc.code == 403 {
				badX = s.exchange + "-ro"
				testbroker.DeleteExchanges(t, url, badX)
				withCh(t, url, func(ch *amqp.Channel) {
					if err := ch.ExchangeDeclare(badX, "direct", true, false, false, false, nil); err != nil {
						t.Fatal(err)
					}
				})
				// May declare anything, write only to its own exchange and queue (bind needs write
				// on the queue), read anything.
				pubURL = testbroker.AddUser(t, url, ".*", "^("+s.exchange+"|"+s.queue+")$", ".*")
			}
			cfg := s.config(t, pubURL, t.TempDir())
			cfg.MaxAttempts, cfg.RetryBackoff = 0, nil // defaults: 10 attempts, 250 ms .. 30 s
			cfg.MissingExchangeGrace = 2 * time.Second
			var parkedN atomic.Int64
			cfg.OnParked = func(*ParkedError) { parkedN.Add(1) }
			p := mustNew(t, cfg)
			ctx := context.Background()
			l := newLedger()
			const bad = 20
			var bads []*Receipt
			start := time.Now()
			for i := range bad + 2 {
				msg := Message{Exchange: s.exchange, RoutingKey: s.key, Body: []byte{byte(i)}}
				if i > 0 && i <= bad {
					msg.Exchange = badX
				}
				r, err := p.Publish(ctx, msg)
				if err != nil {
					t.Fatal(err)
				}
				if msg.Exchange == s.exchange {
					l.add(r.Stamp())
				} else {
					bads = append(bads, r)
				}
			}
			flush(t, p, 60*time.Second)
			elapsed := time.Since(start)
			for _, r := range bads {
				var pe *ParkedError
				if err := waitErr(t, r); !errors.As(err, &pe) || int(pe.ReplyCode) != tc.code {
					t.Fatalf("message to exchange %s: %v, want parked with %d", badX, err, tc.code)
				}
			}
			// OnParked runs on the callback goroutine, after the receipts were settled.
			testutil.Eventually(t, 5*time.Second, "every OnParked call", func() bool { return parkedN.Load() >= int64(bad) })
			if got := parkedN.Load(); got != int64(bad) {
				t.Errorf("OnParked called %d times, want %d", got, bad)
			}
			// Grace, then one channel reopen per message; a backoff per message would take far longer.
			if elapsed > 30*time.Second {
				t.Errorf("parking %d messages took %v", bad, elapsed)
			}
			t.Logf("%d messages refused with %d parked in %v", bad, tc.code, elapsed.Round(time.Millisecond))
			check(t, url, s.queue, l, checkOpts{})
		})
	}
}

// TestRedriveMissingExchange, against the broker: a message parked for a missing exchange and then
// re-driven (journal.Redrive gives it an ID no Publish accepted) is parked again while the exchange
// is still missing, and Flush returns; once the exchange exists, a second re-drive delivers it.
func TestRedriveMissingExchange(t *testing.T) {
	url := testbroker.SharedURL(t)
	s := newSetup(t, url, "classic", nil)
	missing := s.exchange + "-later"
	testbroker.DeleteExchanges(t, url, missing)
	cfg := s.config(t, url, t.TempDir())
	cfg.MaxAttempts = 1
	p := mustNew(t, cfg)
	ctx := context.Background()
	r, err := p.Publish(ctx, Message{Exchange: missing, RoutingKey: s.key, Body: []byte("late")})
	if err != nil {
		t.Fatal(err)
	}
	var pe *ParkedError
	if err := waitErr(t, r); !errors.As(err, &pe) || pe.ReplyCode != 404 {
		t.Fatalf("first send: %v, want parked with 404", err)
	}
	if err := p.Journal().Redrive(ctx, r.id); err != nil {
		t.Fatal(err)
	}
	flush(t, p, 20*time.Second) // parked again: Flush must not wait for it forever
	st := p.Journal().Stats()
	if st.Pending != 0 || st.Parked != 1 {
		t.Fatalf("after the re-drive while missing: %d pending, %d parked; want 0 and 1", st.Pending, st.Parked)
	}

	// The exchange appears (bound to the queue): a re-drive now delivers the message.
	declare(t, url, s)
	withCh(t, url, func(ch *amqp.Channel) {
		if err := ch.ExchangeDeclare(missing, "direct", true, false, false, false, nil); err != nil {
			t.Fatal(err)
		}
		if err := ch.QueueBind(s.queue, s.key, missing, false, nil); err != nil {
			t.Fatal(err)
		}
	})
	var id uint64
	if err := p.Journal().Parked(ctx, func(pe journal.ParkedEntry) error { id = pe.ID; return nil }); err != nil {
		t.Fatal(err)
	}
	if err := p.Journal().Redrive(ctx, id); err != nil {
		t.Fatal(err)
	}
	flush(t, p, 20*time.Second)
	l := newLedger()
	if n := check(t, url, s.queue, l, checkOpts{allowExtra: true}).arrivals; n != 1 {
		t.Fatalf("%d arrivals after the exchange appeared, want the re-driven message once", n)
	}
}

// withCh runs fn on a channel of a fresh connection to url.
func withCh(t testing.TB, url string, fn func(ch *amqp.Channel)) {
	t.Helper()
	c, err := amqp.Dial(url)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ch, err := c.Channel()
	if err != nil {
		t.Fatal(err)
	}
	fn(ch)
}

// publishBatch journals n messages with PublishBatch, recording them.
func publishBatch(t *testing.T, p *Publisher, s setup, l *ledger, n int) {
	t.Helper()
	msgs := make([]Message, n)
	for i := range msgs {
		msgs[i] = Message{Exchange: s.exchange, RoutingKey: s.key, Body: []byte{byte(i)}}
	}
	rs, err := p.PublishBatch(context.Background(), msgs)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range rs {
		l.add(r.Stamp())
	}
}
