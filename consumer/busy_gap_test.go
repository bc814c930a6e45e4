package consumer_test

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cenkalti/backoff/v4"
	amqp "github.com/rabbitmq/amqp091-go"
	"github.com/stretchr/testify/require"

	"github.com/rabbitkit/rabbitkit/consumer"
	"github.com/rabbitkit/rabbitkit/consumer/dedup"
	"github.com/rabbitkit/rabbitkit/internal/testbroker"
	"github.com/rabbitkit/rabbitkit/internal/testutil"
)

// A worker that never runs dry must still report a gap once its grace has elapsed, not when the
// backlog is gone (found in review: the expiry ticker was only read while idle).
func TestGapReportedWhileWorkerIsBusy(t *testing.T) {
	f := newFixture(t, testbroker.SharedURL(t))
	const n = 3000
	msgs := make([]amqp.Publishing, 0, n)
	for seq := int64(2); seq <= n+1; seq++ { // seq 1 never arrives
		msgs = append(msgs, stamped("busy", "s", 7, seq, "x"))
	}
	f.publish(f.channel(), msgs...)

	var handled, handledAtGap atomic.Int64
	handledAtGap.Store(-1)
	cfg := f.config()
	cfg.Dedup = dedup.Config{GapGrace: 200 * time.Millisecond}
	cfg.OnGap = func(e dedup.Event) {
		if e.Kind == dedup.EventGapDetected {
			handledAtGap.CompareAndSwap(-1, handled.Load())
		}
	}
	c, err := consumer.New(cfg)
	require.NoError(t, err)
	r := start(t, c, func(context.Context, *consumer.Message) error {
		handled.Add(1)
		time.Sleep(2 * time.Millisecond)
		return nil
	}, nil)
	testutil.Eventually(t, 60*time.Second, "all handled", func() bool { return handled.Load() == n })
	r.stop(t)
	require.GreaterOrEqual(t, handledAtGap.Load(), int64(0), "the gap at seq 1 was never reported")
	require.Less(t, handledAtGap.Load(), int64(n*3/4), "the gap was reported only when the backlog was almost gone")
}

// A ReconnectBackoff that gives up must end Run with ErrGaveUp, never a clean nil.
func TestRunReportsGivingUp(t *testing.T) {
	f := newFixture(t, testbroker.SharedURL(t))
	cfg := f.config("amqp://guest:guest@127.0.0.1:1/")
	cfg.ReconnectBackoff = func() backoff.BackOff {
		return backoff.WithMaxRetries(backoff.NewConstantBackOff(10*time.Millisecond), 3)
	}
	c, err := consumer.New(cfg)
	require.NoError(t, err)
	defer c.Close(context.Background())
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	err = c.Run(ctx, func(context.Context, *consumer.Message) error { return nil })
	require.ErrorIs(t, err, consumer.ErrGaveUp)
	require.NoError(t, ctx.Err(), "Run must return because it gave up, not because ctx ended")
}

// Two Runs on one BoltStore would each classify against their own in-memory window: refused.
func TestSecondRunOnOneStoreIsRefused(t *testing.T) {
	f := newFixture(t, testbroker.SharedURL(t))
	st, err := consumer.OpenBoltStore(f.path, consumer.BoltOptions{})
	require.NoError(t, err)
	defer st.Close()
	cfg := f.config()
	cfg.StorePath = ""
	c1, err := consumer.NewWithStore(cfg, st)
	require.NoError(t, err)
	c2, err := consumer.NewWithStore(cfg, st)
	require.NoError(t, err)
	var handled atomic.Int64
	r := start(t, c1, func(context.Context, *consumer.Message) error { handled.Add(1); return nil }, nil)
	f.publish(f.channel(), stamped("shared", "s", 1, 1, "x"))
	testutil.Eventually(t, 20*time.Second, "first Run consuming", func() bool { return handled.Load() == 1 })

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	err = c2.Run(ctx, func(context.Context, *consumer.Message) error { return nil })
	require.ErrorIs(t, err, consumer.ErrStoreInUse)
	r.stop(t)
}
