package testbroker

import (
	"context"
	"os"
	"os/exec"
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

// TestCluster: three private nodes form one cluster; the helpers find a quorum queue's leader and
// a connection's node; a quorum queue keeps a confirmed message through a kill -9 of its leader;
// the killed node rejoins on Start; nothing is left behind afterwards.
func TestCluster(t *testing.T) {
	if testing.Short() {
		t.Skip("starts three RabbitMQ nodes")
	}
	var names, dirs []string
	t.Run("run", func(t *testing.T) {
		c := StartCluster(t, 3, WithErlArgs(NoBusyWait))
		require.Equal(t, []int{0, 1, 2}, c.RunningNodes(t))
		for i := range 3 {
			names = append(names, c.Node(i).Name)
			dirs = append(dirs, c.Node(i).dir)
		}

		// Declared through node 1, the quorum queue is led from there.
		q := Name(t, "cluster-q")
		conn1 := dial(t, c.URLs()[1])
		ch, err := conn1.Channel()
		require.NoError(t, err)
		_, err = ch.QueueDeclare(q, true, false, false, false, amqp.Table{amqp.QueueTypeArg: amqp.QueueTypeQuorum})
		require.NoError(t, err)
		require.Equal(t, 1, c.QueueLeader(t, q))
		require.NoError(t, ch.Confirm(false))
		dc, err := ch.PublishWithDeferredConfirm("", q, false, false, amqp.Publishing{DeliveryMode: amqp.Persistent, Body: []byte("kept")})
		require.NoError(t, err)
		ok, err := dc.WaitContext(context.Background())
		require.NoError(t, err)
		require.True(t, ok)
		conn1.Close()

		// A named connection to node 2 is found on node 2, by name and by address.
		conn2, err := amqp.DialConfig(c.URLs()[2], amqp.Config{Properties: amqp.Table{"connection_name": "rk-cluster-probe"}})
		require.NoError(t, err)
		defer conn2.Close()
		require.Equal(t, 2, c.NodeOfAddr(conn2.RemoteAddr().String()))
		require.Equal(t, 2, c.WaitConnection(t, "rk-cluster-probe", 30*time.Second))

		// kill -9 of the leader: another node leads, the confirmed message is still there.
		start := time.Now()
		c.Node(1).Kill(t)
		leader := c.WaitQueueLeader(t, q, time.Minute)
		require.NotEqual(t, 1, leader)
		t.Logf("new leader: node %d, %v after the kill", leader, time.Since(start).Round(100*time.Millisecond))
		ch2, err := conn2.Channel()
		require.NoError(t, err)
		d, ok, err := ch2.Get(q, true)
		require.NoError(t, err)
		require.True(t, ok, "the confirmed message is gone after the leader's kill -9")
		require.Equal(t, "kept", string(d.Body))

		start = time.Now()
		c.Node(1).Start(t)
		c.WaitRunning(t, time.Minute)
		t.Logf("killed node back in the cluster %v after Start", time.Since(start).Round(100*time.Millisecond))
		require.Equal(t, []int{0, 1, 2}, c.RunningNodes(t))
	})
	// Cleanup ran: no node process, no folder.
	ps, _ := exec.Command("ps", "-eo", "args").Output()
	for i, name := range names {
		require.NotContains(t, string(ps), name, "node %d still runs after cleanup", i)
		_, err := os.Stat(dirs[i])
		require.True(t, os.IsNotExist(err), "node %d's folder %s is left: %v", i, dirs[i], err)
	}
}
