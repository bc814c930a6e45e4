package consumer_test

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cenkalti/backoff/v4"
	"github.com/stretchr/testify/require"
	bolt "go.etcd.io/bbolt"

	"github.com/rabbitkit/rabbitkit/consumer"
	"github.com/rabbitkit/rabbitkit/internal/testbroker"
	"github.com/rabbitkit/rabbitkit/internal/testutil"
)

// A handler that says the message can never succeed (consumer.Poison), or a RetryBackoff that
// stops, parks the message after that attempt instead of spending MaxAttempts retries on it; the
// rest of the stream goes on, and the parked seq is accounted for.
func TestParkNow(t *testing.T) {
	cases := []struct {
		name    string
		tx      bool
		fail    error
		backoff func() backoff.BackOff
		reason  string
	}{
		{"poison/plain", false, consumer.Poison(errors.New("order 7 has no lines")), nil, "can never succeed: consumer: poison message: order 7 has no lines"},
		{"poison/tx", true, consumer.Poison(errors.New("order 7 has no lines")), nil, "can never succeed"},
		{"stopped-backoff/plain", false, errors.New("flaky"), func() backoff.BackOff { return &backoff.StopBackOff{} }, "RetryBackoff stopped"},
		{"stopped-backoff/tx", true, errors.New("flaky"), func() backoff.BackOff { return &backoff.StopBackOff{} }, "RetryBackoff stopped"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t, testbroker.SharedURL(t))
			ch := f.channel()
			f.publish(ch, stamped("src", "s", 1, 1, "ok"), stamped("src", "s", 1, 2, "bad"), stamped("src", "s", 1, 3, "ok"))
			cfg := f.config()
			cfg.MaxAttempts = 50
			if tc.backoff != nil {
				cfg.RetryBackoff = tc.backoff
			}
			parked := make(chan consumer.Parked, 1)
			cfg.OnParked = func(p consumer.Parked) { parked <- p }
			c, err := consumer.New(cfg)
			require.NoError(t, err)
			var attempts atomic.Int32
			var cnt counter
			h := func(_ context.Context, m *consumer.Message) error {
				if string(m.Body) == "bad" {
					attempts.Add(1)
					return tc.fail
				}
				cnt.add(m)
				return nil
			}
			var run *running
			if tc.tx {
				run = start(t, c, nil, func(ctx context.Context, _ *bolt.Tx, m *consumer.Message) error { return h(ctx, m) })
			} else {
				run = start(t, c, h, nil)
			}
			var p consumer.Parked
			select {
			case p = <-parked:
			case <-time.After(20 * time.Second):
				t.Fatal("not parked")
			}
			testutil.Eventually(t, 10*time.Second, "the rest handled", func() bool { return len(cnt.snapshot()) == 2 })
			run.stop(t)
			require.Equal(t, int32(1), attempts.Load(), "parked after the first attempt")
			require.Contains(t, p.Reason, tc.reason)
			require.True(t, p.Accounted)
			require.Equal(t, 1, f.messages(ch, f.parked))
			require.Zero(t, f.messages(ch, f.queue))
		})
	}
}

func TestPoison(t *testing.T) {
	require.NoError(t, consumer.Poison(nil))
	base := errors.New("no such customer")
	err := consumer.Poison(base)
	require.ErrorIs(t, err, consumer.ErrPoison)
	require.ErrorIs(t, err, base)
}
