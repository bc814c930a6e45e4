package consumer_test

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/rabbitkit/rabbitkit/consumer"
	"github.com/rabbitkit/rabbitkit/internal/testbroker"
	"github.com/rabbitkit/rabbitkit/internal/testutil"
)

// Close stops a running Run with a drain: the handler in flight finishes, its mark commits and is
// acked, Run returns nil, and the store is closed.
func TestCloseStopsRun(t *testing.T) {
	f := newFixture(t, testbroker.SharedURL(t))
	ch := f.channel()
	c, err := consumer.New(f.config())
	require.NoError(t, err)
	entered := make(chan struct{})
	var cnt counter
	runErr := make(chan error, 1)
	go func() {
		runErr <- c.Run(context.Background(), func(ctx context.Context, m *consumer.Message) error {
			close(entered)
			time.Sleep(200 * time.Millisecond) // still running when Close is called
			cnt.add(m)
			return nil
		})
	}()
	f.publish(ch, stamped("src", "s", 1, 1, "x"))
	<-entered
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	require.NoError(t, c.Close(ctx))
	// Close returns once Run's work is done (its last deferred step); Run's return value reaches
	// this goroutine a moment later.
	select {
	case err := <-runErr:
		require.NoError(t, err)
	case <-time.After(time.Second):
		t.Fatal("Run did not return when Close did")
	}
	requireExactlyOnce(t, cnt.snapshot(), []string{key("src", "s", 1, 1)})
	require.Zero(t, f.messages(ch, f.queue), "the handled message was acked")
	require.ErrorIs(t, c.Run(context.Background(), func(context.Context, *consumer.Message) error { return nil }), consumer.ErrClosed)
	_, err = c.Store().Load(context.Background())
	require.ErrorIs(t, err, consumer.ErrClosed, "the store New opened is closed")
	require.NoError(t, c.Close(ctx), "idempotent")
}

// When Close's context ends first, the handlers' context is cancelled (stop now), Close reports
// it, and Run closes the store when it returns; the unfinished message is redelivered later.
func TestCloseStopsNow(t *testing.T) {
	f := newFixture(t, testbroker.SharedURL(t))
	ch := f.channel()
	c, err := consumer.New(f.config())
	require.NoError(t, err)
	entered := make(chan struct{})
	runErr := make(chan error, 1)
	go func() {
		runErr <- c.Run(context.Background(), func(ctx context.Context, m *consumer.Message) error {
			close(entered)
			<-ctx.Done() // a handler that only stops when told
			return ctx.Err()
		})
	}()
	f.publish(ch, stamped("src", "s", 1, 1, "x"))
	<-entered
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	require.ErrorIs(t, c.Close(ctx), context.DeadlineExceeded)
	select {
	case <-runErr:
	case <-time.After(20 * time.Second):
		t.Fatal("Run did not return after its handlers were cancelled")
	}
	testutil.Eventually(t, 10*time.Second, "store closed by Run", func() bool {
		_, err := c.Store().Load(context.Background())
		return err != nil
	})
	testutil.Eventually(t, 10*time.Second, "the message back in the queue", func() bool { return f.messages(ch, f.queue) == 1 })
}
