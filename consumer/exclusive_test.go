package consumer_test

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
	"github.com/stretchr/testify/require"

	"github.com/rabbitkit/rabbitkit/consumer"
	"github.com/rabbitkit/rabbitkit/internal/testbroker"
	"github.com/rabbitkit/rabbitkit/internal/testutil"
	"github.com/rabbitkit/rabbitkit/topology"
)

// A second consumer process on a queue, with a bbolt store of its own, would apply messages a
// second time: the broker keeps it out (an exclusive basic.consume on classic queues, which
// answers 403; the queue's consumer count for quorum queues, which ignore exclusive), the cause is
// named (ErrQueueInUse in WaitReady and Status), and it takes over once the first one goes.
func TestSecondExclusiveConsumerKeptOut(t *testing.T) {
	for _, typ := range []string{topology.Classic, topology.Quorum} {
		t.Run(typ, func(t *testing.T) {
			url := testbroker.SharedURL(t)
			f := newFixture(t, url)
			ch := f.channel()
			_, err := ch.QueueDelete(f.queue, false, false, false)
			require.NoError(t, err)
			_, err = ch.QueueDeclare(f.queue, true, false, false, false, amqp.Table{amqp.QueueTypeArg: typ})
			require.NoError(t, err)
			cfg := f.config()
			cfg.Topology = topology.Topology{Queues: []topology.Queue{{Name: f.queue, Type: typ}}}
			first, err := consumer.New(cfg)
			require.NoError(t, err)
			var cnt1, cnt2 counter
			r1 := start(t, first, func(_ context.Context, m *consumer.Message) error { cnt1.add(m); return nil }, nil)
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			require.NoError(t, first.WaitReady(ctx))

			cfg2 := cfg
			cfg2.StorePath = filepath.Join(t.TempDir(), "second.db")
			second, err := consumer.New(cfg2)
			require.NoError(t, err)
			start(t, second, func(_ context.Context, m *consumer.Message) error { cnt2.add(m); return nil }, nil)
			short, cancelShort := context.WithTimeout(context.Background(), 3*time.Second)
			defer cancelShort()
			err = second.WaitReady(short)
			require.ErrorIs(t, err, consumer.ErrQueueInUse)
			require.ErrorIs(t, second.Status().LastError, consumer.ErrQueueInUse)

			f.publish(ch, stamped("src", "s", 1, 1, "x"), stamped("src", "s", 1, 2, "x"))
			testutil.Eventually(t, 10*time.Second, "the first handled both", func() bool { return len(cnt1.snapshot()) == 2 })
			require.Empty(t, cnt2.snapshot())

			r1.stop(t)
			require.NoError(t, second.WaitReady(ctx), "the second takes over once the first is gone")
			f.publish(ch, stamped("src", "s", 1, 3, "x"))
			testutil.Eventually(t, 10*time.Second, "the second handles what follows", func() bool { return len(cnt2.snapshot()) == 1 })
		})
	}
}
