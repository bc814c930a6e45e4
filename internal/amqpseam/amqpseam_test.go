package amqpseam_test

import (
	"context"
	"errors"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/rabbitkit/rabbitkit/internal/amqpconn"
	"github.com/rabbitkit/rabbitkit/internal/amqpseam"
	"github.com/rabbitkit/rabbitkit/internal/amqpseam/amqpfake"
	"github.com/rabbitkit/rabbitkit/internal/testbroker"
	"github.com/rabbitkit/rabbitkit/topology"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// The real implementation against the shared broker, with the semantics amqpfake copies: publish
// sequence numbers and delivery tags from 1 on every channel, a return before its confirm, a
// passive declare of a missing queue closing its channel with a 404, Cancel closing the
// deliveries, and every listener closed with the channel.
func TestRealSeam(t *testing.T) {
	url := testbroker.SharedURL(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	for _, batch := range []bool{false, true} {
		q := testbroker.Name(t, "seam")
		testbroker.DeleteQueues(t, url, q)
		d := amqpseam.Dial(&amqpconn.Dialer{URLs: []string{url}, BatchWrites: batch})
		conn, got, err := d.Dial(ctx)
		require.NoError(t, err)
		require.Equal(t, url, got)
		require.Greater(t, conn.FrameMax(), 4096)
		blocks := conn.NotifyBlocked(4)

		ch, err := conn.Channel()
		require.NoError(t, err)
		conf, err := ch.Confirm(8)
		require.NoError(t, err)
		rets := ch.NotifyReturn(8)
		cancels := ch.NotifyCancel(1)
		require.NoError(t, ch.Declare(topology.Topology{Queues: []topology.Queue{{Name: q, Type: topology.Classic}}}))

		conn.Hold()
		require.NoError(t, ch.Publish(ctx, "", q+".nowhere", true, amqp.Publishing{Body: []byte("unroutable")}))
		require.NoError(t, ch.Publish(ctx, "", q, true, amqp.Publishing{Body: []byte("one")}))
		conn.Release()
		ret := <-rets
		require.Equal(t, amqp.NoRoute, int(ret.ReplyCode))
		require.Equal(t, "unroutable", string(ret.Body))
		require.Equal(t, amqp.Confirmation{DeliveryTag: 1, Ack: true}, <-conf, "a returned message is acked, after its return")
		require.Equal(t, amqp.Confirmation{DeliveryTag: 2, Ack: true}, <-conf)

		info, err := ch.Inspect(q)
		require.NoError(t, err)
		require.Equal(t, 1, info.Messages)
		require.NoError(t, ch.Qos(10))
		dels, err := ch.Consume(q, "seam-test", true)
		require.NoError(t, err)
		del := <-dels
		require.Equal(t, uint64(1), del.DeliveryTag)
		require.Equal(t, "one", string(del.Body))
		require.NoError(t, ch.Ack(del.DeliveryTag, true))
		require.NoError(t, ch.Cancel("seam-test"))
		_, open := <-dels
		require.False(t, open, "Cancel closes the deliveries")

		// A 404 closes the channel (not the connection); every listener closes with it.
		_, err = ch.Inspect(q + ".missing")
		var ae *amqp.Error
		require.True(t, errors.As(err, &ae))
		require.Equal(t, amqp.NotFound, ae.Code)
		e := <-ch.Closed()
		require.Equal(t, amqp.NotFound, e.Code)
		_, open = <-ch.Closed()
		require.False(t, open)
		_, open = <-conf
		require.False(t, open)
		_, open = <-cancels
		require.False(t, open)
		require.True(t, ch.IsClosed())
		require.False(t, conn.IsClosed())

		ch2, err := conn.Channel()
		require.NoError(t, err)
		conf2, err := ch2.Confirm(1)
		require.NoError(t, err)
		require.NoError(t, ch2.Publish(ctx, "", q, false, amqp.Publishing{Body: []byte("two")}))
		require.Equal(t, uint64(1), (<-conf2).DeliveryTag, "tags start at 1 on every channel")
		info, err = ch2.Inspect(q)
		require.NoError(t, err)
		require.Equal(t, 1, info.Messages)
		require.NoError(t, ch2.Close())

		require.NoError(t, conn.Close(time.Now().Add(time.Second)))
		_, open = <-conn.Closed()
		require.False(t, open, "a clean close yields no error")
		require.True(t, conn.IsClosed())
		_, open = <-blocks
		require.False(t, open)
		conn.ForceClose() // harmless after Close
	}
}

// The fake's listeners behave like the real ones above.
func TestFakeSeam(t *testing.T) {
	d := amqpfake.New()
	ctx := context.Background()
	c, url, err := d.Dial(ctx)
	require.NoError(t, err)
	require.Equal(t, amqpfake.URL, url)
	conn := d.NextConn(t)
	ch, err := c.Channel()
	require.NoError(t, err)
	conf, err := ch.Confirm(8)
	require.NoError(t, err)
	rets := ch.NotifyReturn(8)
	cancels := ch.NotifyCancel(1)
	require.NoError(t, ch.Declare(topology.Topology{Queues: []topology.Queue{{Name: "q"}}}))
	fch := conn.NextChan(t)
	require.Equal(t, "q", fch.Declared().Queues[0].Name)

	require.NoError(t, ch.Publish(ctx, "", "nowhere", true, amqp.Publishing{Body: []byte("unroutable")}))
	require.NoError(t, ch.Publish(ctx, "", "q", true, amqp.Publishing{Body: []byte("one")}))
	p1, p2 := fch.NextPub(t, time.Second), fch.NextPub(t, time.Second)
	require.Equal(t, []uint64{1, 2}, []uint64{p1.Tag, p2.Tag})
	fch.ReturnPublish(p1)
	fch.ConfirmPublish(2, true, true, 1)
	require.Equal(t, "unroutable", string((<-rets).Body))
	require.Equal(t, amqp.Confirmation{DeliveryTag: 1, Ack: true}, <-conf)
	require.Equal(t, amqp.Confirmation{DeliveryTag: 2, Ack: true}, <-conf)

	d.SetQueue("q", 3, 0)
	info, err := ch.Inspect("q")
	require.NoError(t, err)
	require.Equal(t, 3, info.Messages)
	dels, err := ch.Consume("q", "tag", true)
	require.NoError(t, err)
	require.Same(t, fch, conn.NextConsumer(t))
	require.Equal(t, uint64(1), fch.Deliver(amqp.Delivery{Body: []byte("x")}))
	del := <-dels
	require.Equal(t, uint64(1), del.DeliveryTag)
	require.Equal(t, "tag", del.ConsumerTag)
	require.NoError(t, ch.Ack(1, true))
	require.Equal(t, amqpfake.Settle{Tag: 1, Multiple: true, Ack: true}, fch.NextSettle(t, time.Second))
	require.NoError(t, ch.Cancel("tag"))
	_, open := <-dels
	require.False(t, open)

	d.SetQueueErr("missing", nil)
	_, err = ch.Inspect("missing")
	var ae *amqp.Error
	require.True(t, errors.As(err, &ae))
	require.Equal(t, amqp.NotFound, ae.Code)
	require.Equal(t, amqp.NotFound, (<-ch.Closed()).Code)
	for _, l := range []func() bool{
		func() bool { _, ok := <-ch.Closed(); return ok },
		func() bool { _, ok := <-conf; return ok },
		func() bool { _, ok := <-cancels; return ok },
	} {
		require.False(t, l())
	}
	require.False(t, c.IsClosed())
	require.ErrorIs(t, ch.Publish(ctx, "", "q", false, amqp.Publishing{}), amqp.ErrClosed)

	require.NoError(t, c.Close(time.Now()))
	_, open = <-c.Closed()
	require.False(t, open)
	_, err = c.Channel()
	require.ErrorIs(t, err, amqp.ErrClosed)
}
