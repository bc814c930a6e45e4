package consumer_test

import (
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/rabbitkit/rabbitkit/consumer"
	"github.com/rabbitkit/rabbitkit/internal/testbroker"
	"github.com/rabbitkit/rabbitkit/internal/testutil"
)

// A configuration that can never connect is told in code: WaitReady fails naming the broker's
// refusal, and Status carries it as LastError.
func TestWaitReadyReportsWhyNot(t *testing.T) {
	url := testbroker.SharedURL(t)
	cases := []struct {
		name, url, want string
	}{
		{"wrong password", strings.Replace(url, "guest:guest@", "guest:wrong@", 1), "403"},
		{"refused vhost", strings.TrimSuffix(url, "/") + "/no-such-vhost", "vhost"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t, url)
			cfg := f.config(tc.url)
			c, err := consumer.New(cfg)
			require.NoError(t, err)
			done := make(chan error, 1)
			go func() {
				done <- c.Run(context.Background(), func(context.Context, *consumer.Message) error { return nil })
			}()
			// RabbitMQ answers a failed login after about 3 s.
			ctx, cancel := context.WithTimeout(context.Background(), 8*time.Second)
			defer cancel()
			err = c.WaitReady(ctx)
			require.ErrorIs(t, err, context.DeadlineExceeded)
			require.Contains(t, err.Error(), tc.want)
			require.NotContains(t, err.Error(), "guest:wrong@", "the password is redacted")
			st := c.Status()
			require.Equal(t, consumer.StateConnecting, st.State)
			require.Error(t, st.LastError)
			require.False(t, st.LastErrorAt.IsZero())
			require.NoError(t, c.Close(context.Background()))
			require.NoError(t, <-done)
			require.ErrorIs(t, c.WaitReady(context.Background()), consumer.ErrClosed)
		})
	}
}

// WaitReady returns once the Run consumes; OnStateChange sees connecting -> consuming, then the
// loss of the session with its cause, and idle when Run returns.
func TestWaitReadyAndStateChanges(t *testing.T) {
	f := newFixture(t, testbroker.SharedURL(t))
	proxy := testbroker.NewProxy(t, f.url)
	cfg := f.config(proxy.URL)
	var mu sync.Mutex
	var changes []consumer.StateChange
	cfg.OnStateChange = func(sc consumer.StateChange) { mu.Lock(); changes = append(changes, sc); mu.Unlock() }
	c, err := consumer.New(cfg)
	require.NoError(t, err)
	require.Equal(t, consumer.StateIdle, c.Status().State)
	done := make(chan error, 1)
	go func() {
		done <- c.Run(context.Background(), func(context.Context, *consumer.Message) error { return nil })
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	require.NoError(t, c.WaitReady(ctx))
	require.Equal(t, consumer.StateConsuming, c.Status().State)
	proxy.Cut(t)
	testutil.Eventually(t, 20*time.Second, "reconnected after the cut", func() bool {
		mu.Lock()
		defer mu.Unlock()
		n := 0
		for _, sc := range changes {
			if sc.To == consumer.StateConsuming {
				n++
			}
		}
		return n >= 2
	})
	require.NoError(t, c.WaitReady(ctx))
	require.NoError(t, c.Close(ctx))
	require.NoError(t, <-done)
	require.Equal(t, consumer.StateIdle, c.Status().State)
	mu.Lock()
	defer mu.Unlock()
	require.Equal(t, consumer.StateIdle, changes[0].From)
	require.Equal(t, consumer.StateConnecting, changes[0].To)
	require.Equal(t, consumer.StateConsuming, changes[1].To)
	require.Equal(t, consumer.StateConnecting, changes[2].To)
	require.Error(t, changes[2].Err, "the loss carries its cause")
	require.Equal(t, consumer.StateIdle, changes[len(changes)-1].To)
	require.NotNil(t, c.Status().LastError)
	var sawURL bool
	for _, sc := range changes {
		sawURL = sawURL || strings.Contains(sc.URL, "127.0.0.1")
	}
	require.True(t, sawURL)
}
