package amqpconn

import (
	"context"
	"crypto/tls"
	"errors"
	"net"
	"testing"
	"time"

	"github.com/cenkalti/backoff/v4"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/rabbitkit/rabbitkit/internal/testbroker"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func fastBackoff() backoff.BackOff {
	return backoff.WithMaxRetries(backoff.NewConstantBackOff(10*time.Millisecond), 20)
}

func TestDialFailsOverToTheNextURL(t *testing.T) {
	url := testbroker.SharedURL(t)
	d := &Dialer{URLs: []string{"amqp://guest:guest@127.0.0.1:1/", url}, Backoff: fastBackoff, Name: "amqpconn-test"}
	c, got, err := d.Dial(context.Background())
	require.NoError(t, err)
	defer c.Close()
	require.Equal(t, url, got)
}

func TestDialGivesUpWhenTheBackoffStops(t *testing.T) {
	d := &Dialer{URLs: []string{"amqp://guest:guest@127.0.0.1:1/"}, Backoff: func() backoff.BackOff {
		return backoff.WithMaxRetries(backoff.NewConstantBackOff(time.Millisecond), 2)
	}}
	_, _, err := d.Dial(context.Background())
	require.ErrorContains(t, err, "giving up after 3 attempts")
}

func TestDialReportsEveryFailedAttempt(t *testing.T) {
	var errs []error
	d := &Dialer{URLs: []string{"amqp://guest:secret@127.0.0.1:1/"}, OnError: func(err error) { errs = append(errs, err) },
		Backoff: func() backoff.BackOff { return backoff.WithMaxRetries(backoff.NewConstantBackOff(time.Millisecond), 2) }}
	_, _, err := d.Dial(context.Background())
	require.Error(t, err)
	require.Len(t, errs, 3)
	for _, e := range errs {
		require.ErrorContains(t, e, "connection refused")
		require.NotContains(t, e.Error(), "secret")
	}
}

func TestDialOnceHonoursContextDuringHandshake(t *testing.T) {
	// A peer that accepts TCP and never speaks AMQP: only ctx can end the dial.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer l.Close()
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			defer c.Close()
		}
	}()
	d := &Dialer{URLs: []string{"amqp://guest:guest@" + l.Addr().String() + "/"}}
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err = d.DialOnce(ctx, d.URLs[0])
	require.Error(t, err)
	require.True(t, errors.Is(err, context.DeadlineExceeded), "got %v", err)
	require.Less(t, time.Since(start), 3*time.Second)
}

func TestDialNeedsAURL(t *testing.T) {
	_, _, err := (&Dialer{}).Dial(context.Background())
	require.ErrorIs(t, err, ErrNoURL)
}

func TestRedact(t *testing.T) {
	require.Equal(t, "amqp://guest:xxxxx@host/", Redact("amqp://guest:secret@host:5672/"))
	require.Equal(t, "<unparsable url>", Redact("http://x"))
}

func TestCheckURLs(t *testing.T) {
	tests := []struct {
		name string
		urls []string
		tls  bool
		bad  string // "" when the URLs are fine; else a part of the error
	}{
		{"plain", []string{"amqp://u:secret@a:5672/", "amqp://b/vh"}, false, ""},
		{"amqps with TLS", []string{"amqps://u:secret@a:5671/"}, true, ""},
		{"amqps with URL parameters", []string{"amqps://a:5671/?cacertfile=/ca.pem&auth_mechanism=external"}, false, ""},
		{"plain with TLS", []string{"amqps://a/", "amqp://u:secret@b:5672/"}, true, "use amqps://"},
		{"certificate files with TLS", []string{"amqps://u:secret@a/?cacertfile=/ca.pem"}, true, "ignored when a TLS config is set"},
		{"server name with TLS", []string{"amqps://a/?server_name_indication=broker.example.com&auth_mechanism=external"}, true, ""},
		{"bad port", []string{"amqp://u:secret@a:port/"}, false, "invalid port"},
		{"wrong scheme", []string{"http://a/"}, false, "scheme"},
		{"empty", []string{""}, false, "scheme"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var cfg *tls.Config
			if tc.tls {
				cfg = &tls.Config{}
			}
			err := CheckURLs(tc.urls, cfg)
			if tc.bad == "" {
				require.NoError(t, err)
				return
			}
			require.ErrorIs(t, err, ErrBadURL)
			require.Contains(t, err.Error(), tc.bad)
			require.NotContains(t, err.Error(), "secret")
		})
	}
}
