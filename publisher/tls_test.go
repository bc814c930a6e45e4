package publisher

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rabbitkit/rabbitkit/internal/testbroker"
	"github.com/rabbitkit/rabbitkit/internal/testutil"
	"github.com/rabbitkit/rabbitkit/metrics"
)

// TestTLS publishes over amqps to a private node whose TLS listener requires a client
// certificate: through connection faults, with the TLS files given as URL parameters, and with a
// TLS config the broker or the client rejects (nothing is lost: the journal keeps every message
// until a corrected publisher sends it).
func TestTLS(t *testing.T) {
	node := testbroker.StartNode(t, testbroker.WithTLS())
	tl := node.TLS

	t.Run("mutual-tls-through-faults", func(t *testing.T) {
		px := testbroker.NewProxy(t, tl.URL)
		s := newSetup(t, node.URL, "classic", nil)
		m := &metrics.Memory{}
		var handshakes atomic.Int32
		var version atomic.Uint32
		tc := tl.Client.Clone()
		tc.VerifyConnection = func(cs tls.ConnectionState) error {
			handshakes.Add(1)
			version.Store(uint32(cs.Version))
			return nil
		}
		cfg := s.config(t, px.URL, t.TempDir())
		cfg.TLS = tc
		cfg.Metrics = m
		p := mustNew(t, cfg)
		pr := startPublishing(p, s, 1500, 2*time.Millisecond)
		pr.waitAccepted(t, 300)
		px.ResetPeer(t)
		time.Sleep(300 * time.Millisecond)
		px.Restore(t)
		pr.waitAccepted(t, 800)
		px.LimitData(t, 3000) // cuts inside a TLS record, on this connection and the next
		time.Sleep(time.Second)
		px.Restore(t)
		pr.wait(t)
		flush(t, p, 60*time.Second)
		check(t, node.URL, s.queue, pr.l, checkOpts{})
		if m.Get(MetricReconnects) < 2 {
			t.Errorf("reconnects %v, want >= 2", m.Get(MetricReconnects))
		}
		if n := handshakes.Load(); n < 3 {
			t.Errorf("%d verified TLS handshakes, want >= 3 (one per connection)", n)
		}
		if v := version.Load(); v < tls.VersionTLS12 {
			t.Errorf("TLS version %#x", v)
		}
		if tc.ServerName != "" {
			t.Errorf("the caller's tls.Config was changed: ServerName %q", tc.ServerName)
		}
	})

	t.Run("url-parameters", func(t *testing.T) {
		s := newSetup(t, node.URL, "classic", nil)
		q := url.Values{"cacertfile": {tl.CAFile}, "certfile": {tl.CertFile}, "keyfile": {tl.KeyFile}}
		cfg := s.config(t, tl.URL+"?"+q.Encode(), t.TempDir())
		p := mustNew(t, cfg)
		pr := startPublishing(p, s, 100, 0)
		pr.wait(t)
		flush(t, p, 30*time.Second)
		check(t, node.URL, s.queue, pr.l, checkOpts{})
	})

	t.Run("server-name-from-url", func(t *testing.T) {
		s := newSetup(t, node.URL, "classic", nil)
		tc := tl.Client.Clone()
		var name atomic.Value
		tc.VerifyConnection = func(cs tls.ConnectionState) error {
			name.Store(cs.ServerName)
			return nil
		}
		cfg := s.config(t, tl.URL+"?server_name_indication=localhost", t.TempDir())
		cfg.TLS = tc
		p := mustNew(t, cfg)
		pr := startPublishing(p, s, 10, 0)
		pr.wait(t)
		flush(t, p, 30*time.Second)
		if got, _ := name.Load().(string); got != "localhost" {
			t.Fatalf("TLS server name %q, want the URL's server_name_indication", got)
		}
	})

	t.Run("certificate-login", func(t *testing.T) {
		s := newSetup(t, node.URL, "classic", nil)
		cfg := s.config(t, "amqps://"+tl.Addr+"/?auth_mechanism=external", t.TempDir())
		cfg.TLS = tl.Client
		p := mustNew(t, cfg)
		pr := startPublishing(p, s, 100, 0)
		pr.wait(t)
		flush(t, p, 30*time.Second)
		check(t, node.URL, s.queue, pr.l, checkOpts{})
	})

	bad := []struct {
		name string
		tls  func() *tls.Config
		want string // in the dial failure logged
		// exact: every dial fails with want. Not so for a missing client certificate: under TLS
		// 1.3 the broker refuses it after the client's handshake is done, and amqp091-go reports
		// the alert or, depending on timing, only the reset or closed socket.
		exact bool
	}{
		{"unknown-ca", func() *tls.Config {
			c := tl.Client.Clone()
			c.RootCAs = tl.OtherCA
			return c
		}, "certificate signed by unknown authority", true},
		{"no-client-certificate", func() *tls.Config {
			c := tl.Client.Clone()
			c.Certificates = nil
			return c
		}, "certificate required", false},
		{"wrong-server-name", func() *tls.Config {
			c := tl.Client.Clone()
			c.ServerName = "broker.example.com"
			return c
		}, "not broker.example.com", true},
	}
	for _, tc := range bad {
		t.Run(tc.name, func(t *testing.T) {
			s := newSetup(t, node.URL, "classic", nil)
			var logs testutil.SyncBuffer
			cfg := s.config(t, tl.URL, t.TempDir())
			cfg.TLS = tc.tls()
			cfg.Logger = slog.New(slog.NewTextHandler(&logs, nil))
			p, err := New(cfg)
			if err != nil {
				t.Fatal(err)
			}
			l := newLedger()
			for i := range 20 {
				r, err := p.Publish(context.Background(), Message{Exchange: s.exchange, RoutingKey: s.key, Body: fmt.Appendf(nil, "m%d", i)})
				if err != nil {
					t.Fatalf("Publish must accept while the broker cannot be reached: %v", err)
				}
				l.add(r.Stamp())
			}
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			err = p.Flush(ctx)
			cancel()
			if !errors.Is(err, context.DeadlineExceeded) {
				t.Fatalf("Flush with a rejected TLS handshake: %v, want the deadline", err)
			}
			testutil.Eventually(t, 10*time.Second, "the TLS failure in the log", func() bool { return strings.Contains(logs.String(), tc.want) })
			// And in code: WaitReady names it, and so does Stats.
			want := tc.want
			if !tc.exact {
				want = "amqpconn: dial amqps://"
			}
			if err := waitReady(p, time.Second); !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), want) {
				t.Errorf("WaitReady with a rejected TLS handshake: %v, want the deadline and %q", err, want)
			}
			if st := p.Stats(); st.LastError == nil || !strings.Contains(st.LastError.Error(), want) {
				t.Errorf("Stats.LastError %v, want %q", st.LastError, want)
			}
			if st := p.Stats(); st.Journal.Pending != 20 {
				t.Errorf("pending %d, want 20", st.Journal.Pending)
			}
			closeCtx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			if err := p.Close(closeCtx); err != nil {
				t.Fatalf("Close: %v", err)
			}

			// The operator fixes the config: the same journal sends everything.
			cfg.TLS = tl.Client
			cfg.Logger = testLogger(t)
			p2 := mustNew(t, cfg)
			flush(t, p2, 30*time.Second)
			check(t, node.URL, s.queue, l, checkOpts{})
		})
	}
}

// TestTLSConfigChecks: New refuses what can never connect, before anything is journaled.
func TestTLSConfigChecks(t *testing.T) {
	tests := []struct {
		name string
		urls []string
		tls  *tls.Config
		ok   bool
	}{
		{"amqps with TLS", []string{"amqps://u:p@broker:5671/"}, &tls.Config{}, true},
		{"amqps without TLS (URL parameters, system roots)", []string{"amqps://u:p@broker:5671/"}, nil, true},
		{"plain with TLS", []string{"amqps://u:p@a:5671/", "amqp://u:secret@b:5672/"}, &tls.Config{}, false},
		{"not a URL", []string{"amqp://u:secret@broker:port/"}, nil, false},
		{"wrong scheme", []string{"http://broker/"}, nil, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Config{URLs: tc.urls, TLS: tc.tls, JournalPath: "unused", Source: "s"}.validate()
			if tc.ok != (err == nil) {
				t.Fatalf("validate: %v, want ok=%v", err, tc.ok)
			}
			if err != nil && (!errors.Is(err, ErrInvalidConfig) || strings.Contains(err.Error(), "secret")) {
				t.Fatalf("error %q: want ErrInvalidConfig, password redacted", err)
			}
		})
	}
}
