package testbroker

import (
	"context"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m, IgnoreProxyLeaks()...) }

func dial(t *testing.T, url string) *amqp.Connection {
	t.Helper()
	c, err := amqp.DialConfig(url, amqp.Config{Heartbeat: time.Second, Dial: amqp.DefaultDial(3 * time.Second)})
	require.NoError(t, err)
	return c
}

func TestProxyFaults(t *testing.T) {
	url := SharedURL(t)
	p := NewProxy(t, url)
	c := dial(t, p.URL)
	closed := c.NotifyClose(make(chan *amqp.Error, 1))
	p.Cut(t)
	select {
	case <-closed:
	case <-time.After(5 * time.Second):
		t.Fatal("Cut did not close the connection")
	}

	c = dial(t, p.URL)
	closed = c.NotifyClose(make(chan *amqp.Error, 1))
	p.Blackhole(t)
	select {
	case <-closed: // noticed by heartbeat (3 x 1 s)
	case <-time.After(10 * time.Second):
		t.Fatal("black hole not noticed by heartbeats")
	}
	p.Restore(t)

	p.Down(t)
	_, err := amqp.DialConfig(p.URL, amqp.Config{Dial: amqp.DefaultDial(time.Second)})
	require.Error(t, err, "Down must refuse connections")
	p.Up(t)
	dial(t, p.URL).Close()
}

func TestPrivateNode(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a RabbitMQ node")
	}
	n := StartNode(t)
	c := dial(t, n.URL)
	closed := c.NotifyClose(make(chan *amqp.Error, 1))
	n.Kill(t)
	select {
	case <-closed:
	case <-time.After(10 * time.Second):
		t.Fatal("kill -9 did not close the connection")
	}
	n.Start(t)
	n.SetMemoryHighWatermark(t, 0.0000001)
	c = dial(t, n.URL)
	blocked := c.NotifyBlocked(make(chan amqp.Blocking, 4))
	ch, err := c.Channel()
	require.NoError(t, err)
	// A publish makes the broker block the publishing connection under an alarm.
	_ = ch.PublishWithContext(context.Background(), "", "nowhere", false, false, amqp.Publishing{Body: []byte("x")})
	select {
	case b := <-blocked:
		require.True(t, b.Active)
	case <-time.After(10 * time.Second):
		t.Fatal("memory alarm did not block the connection")
	}
	n.SetMemoryHighWatermark(t, 0.4)
	select {
	case b := <-blocked:
		require.False(t, b.Active)
	case <-time.After(10 * time.Second):
		t.Fatal("clearing the alarm did not unblock the connection")
	}
	c.Close()
	n.Restart(t)
	dial(t, n.URL).Close()
}
