package integration

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/rabbitkit/rabbitkit/internal/history"
	"github.com/rabbitkit/rabbitkit/internal/testbroker"
	"github.com/rabbitkit/rabbitkit/topology"
)

// TestClusterClassicQueueOnDeadNode measures what a user sees when the node holding a classic
// queue dies in a cluster (docs/OPERATIONS.md, "Running on a cluster"): the queue is unavailable
// through every other node (declare, consume, get: 404), a mandatory publish is returned (and
// acked), a publish without mandatory is acked and dropped, and what was in the queue is there again
// once the node is back. Two examples/publisher processes show what rabbitkit does: one started
// during the outage cannot declare its topology and waits with everything journaled; one connected
// before it gets its messages returned and parks them (operator redrive).
func TestClusterClassicQueueOnDeadNode(t *testing.T) {
	if testing.Short() {
		t.Skip("starts three RabbitMQ nodes")
	}
	bin := binaries(t)
	cl := testbroker.StartCluster(t, 3, testbroker.WithErlArgs(testbroker.NoBusyWait))
	urls := cl.URLs()
	x, q := testbroker.Name(t, "classic-x"), testbroker.Name(t, "classic-q")
	declareClassicVia(t, urls[1], x, q) // the queue lives on node 1

	live := dialConfirm(t, urls[0])
	const before = 200
	acked, nacked, returned := publishN(t, live, x, q, true, before, "before")
	if acked != before {
		t.Fatalf("before the kill: %d acked, %d nacked, %d returned of %d", acked, nacked, returned, before)
	}

	// rabbitkit's publisher, connected before the kill, its topology naming the queue: it does not
	// declare again while its connection lives, so the broker's answer reaches it.
	dir := t.TempDir()
	var mu sync.Mutex
	liveAccepted, liveParked := 0, 0
	livePub := startProc(t, dir, procSpec{
		name: "publisher-connected", bin: filepath.Join(bin, "publisher"),
		args: []string{"-url", urls[0], "-source", "src-connected", "-journal", filepath.Join(dir, "j-connected"),
			"-exchange", x, "-routing-key", q, "-queue", q, "-queue-type", topology.Classic, "-count", "400", "-rate", "20",
			"-stats-every", "1s"},
		onStdout: func(l string) {
			if _, err := history.ParseAccepted(l); err == nil {
				mu.Lock()
				liveAccepted++
				mu.Unlock()
			}
		},
		onStderr: func(l string) {
			if strings.Contains(l, `msg="message parked"`) { // the example's OnParked, once per message
				mu.Lock()
				liveParked++
				mu.Unlock()
			}
		},
	})
	time.Sleep(3 * time.Second)

	cl.Node(1).Kill(t)
	killed := time.Now()
	var b strings.Builder
	fmt.Fprintf(&b, "\nclassic queue %s on node 1, node 1 killed with kill -9; asked through node 0:\n", q)

	// Publishing with confirms, through the exchange and through the default exchange.
	const during = 50
	notMandatoryAcked := 0
	for _, tc := range []struct {
		what      string
		exchange  string
		mandatory bool
	}{{"via the exchange, mandatory", x, true}, {"via the default exchange, mandatory", "", true}, {"via the exchange, not mandatory", x, false}} {
		acked, nacked, returned = publishN(t, live, tc.exchange, q, tc.mandatory, during, "during")
		fmt.Fprintf(&b, "- publish %d %s, confirms: %d acked, %d nacked, %d unconfirmed after 20 s, %d returned\n",
			during, tc.what, acked, nacked, during-acked-nacked, returned)
		if returned != acked && tc.mandatory {
			t.Errorf("%s: %d acked but only %d returned: a mandatory message to a queue on a dead node must come back", tc.what, acked, returned)
		}
		if !tc.mandatory {
			notMandatoryAcked = acked
		}
	}

	ch := channel(t, live.conn)
	_, err := ch.QueueDeclarePassive(q, true, false, false, false, nil)
	fmt.Fprintf(&b, "- queue.declare passive: %v\n", errText(err))
	ch = channel(t, live.conn)
	_, err = ch.QueueDeclare(q, true, false, false, false, amqp.Table{amqp.QueueTypeArg: amqp.QueueTypeClassic})
	fmt.Fprintf(&b, "- queue.declare (what every rabbitkit (re)connect does): %v\n", errText(err))
	ch = channel(t, live.conn)
	_, err = ch.Consume(q, "", false, false, false, false, nil)
	fmt.Fprintf(&b, "- basic.consume: %v\n", errText(err))
	ch = channel(t, live.conn)
	_, _, err = ch.Get(q, false)
	fmt.Fprintf(&b, "- basic.get: %v\n", errText(err))

	// rabbitkit's publisher through node 0 and node 2 while node 1 is down: it declares its
	// topology (the queue included) on connect, so it cannot connect; it journals and waits.
	const kitCount = 100
	accepted := 0
	var confirmed string
	pub := startProc(t, dir, procSpec{
		name: "publisher-classic", bin: filepath.Join(bin, "publisher"),
		args: []string{"-url", urls[0] + "," + urls[2], "-source", "src-classic", "-journal", filepath.Join(dir, "j"),
			"-exchange", x, "-routing-key", q, "-queue", q, "-queue-type", topology.Classic, "-count", fmt.Sprint(kitCount),
			"-stats-every", "1s"},
		onStdout: func(l string) {
			mu.Lock()
			defer mu.Unlock()
			if _, err := history.ParseAccepted(l); err == nil {
				accepted++
			} else if c, ok := strings.CutPrefix(l, "confirmed "); ok {
				confirmed = c
			}
		},
	})
	time.Sleep(10 * time.Second)
	mu.Lock()
	fmt.Fprintf(&b, "- examples/publisher -count %d via nodes 0 and 2, for 10 s: %d accepted (journaled), confirmed line %q, exited %v; last stderr:\n    %s\n",
		kitCount, accepted, confirmed, pub.exited(), strings.ReplaceAll(lastLines(pub.stderrTail(), 2), "\n", "\n    "))
	mu.Unlock()
	down := time.Since(killed)

	start := time.Now()
	cl.Node(1).Start(t)
	cl.WaitRunning(t, time.Minute)
	fmt.Fprintf(&b, "node 1 restarted after %v down; back in the cluster in %v\n", down.Round(100*time.Millisecond), time.Since(start).Round(100*time.Millisecond))
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := pub.wait(ctx); err != nil {
		t.Fatalf("publisher after the node came back: %v\n%s", err, pub.describe())
	}
	fmt.Fprintf(&b, "- examples/publisher then finished: %s (%v after the restart)\n", strings.TrimSpace("confirmed "+confirmed), time.Since(start).Round(100*time.Millisecond))
	liveErr := livePub.wait(ctx) // it exits 1 when it parked messages
	mu.Lock()
	fmt.Fprintf(&b, "- the publisher connected before the kill (-rate 20, 400 messages): %d accepted, %d parked as unroutable (returned), exit %v\n",
		liveAccepted, liveParked, errText(liveErr))
	kept := before + kitCount + liveAccepted - liveParked
	mu.Unlock()
	depth := queueDepth(urls[0], q)
	fmt.Fprintf(&b, "- queue depth now: %d = %d confirmed before the kill + %d from the kit's publisher started during it + %d accepted - %d parked of the connected one;\n"+
		"  the %d acked without mandatory during the outage are not there (dropped by the broker, yet acked)\n",
		depth, before, kitCount, liveAccepted, liveParked, notMandatoryAcked)
	t.Log(b.String())

	if depth != kept {
		t.Errorf("queue holds %d messages after the node came back, want %d (every confirmed, unreturned message; none of the not-mandatory ones)", depth, kept)
	}
}

func declareClassicVia(t *testing.T, url, exchange, queue string) {
	t.Helper()
	conn, err := amqp.Dial(url)
	if err != nil {
		t.Fatalf("dial %s: %v", url, err)
	}
	defer conn.Close()
	topo := topology.Topology{
		Exchanges: []topology.Exchange{{Name: exchange}},
		Queues:    []topology.Queue{{Name: queue, Type: topology.Classic}},
		Bindings:  []topology.Binding{{Queue: queue, Exchange: exchange, Key: queue}},
	}
	if err := topo.Declare(channel(t, conn)); err != nil {
		t.Fatalf("declare: %v", err)
	}
}

type confirmConn struct{ conn *amqp.Connection }

func dialConfirm(t *testing.T, url string) confirmConn {
	t.Helper()
	conn, err := amqp.Dial(url)
	if err != nil {
		t.Fatalf("dial %s: %v", url, err)
	}
	t.Cleanup(func() { conn.Close() })
	return confirmConn{conn}
}

func channel(t *testing.T, conn *amqp.Connection) *amqp.Channel {
	t.Helper()
	ch, err := conn.Channel()
	if err != nil {
		t.Fatalf("channel: %v", err)
	}
	return ch
}

// publishN publishes n persistent mandatory messages on a fresh confirm channel and counts the
// outcomes; it waits up to 20 s for the confirms.
func publishN(t *testing.T, c confirmConn, exchange, key string, mandatory bool, n int, tag string) (acked, nacked, returned int) {
	t.Helper()
	ch := channel(t, c.conn)
	defer ch.Close()
	if err := ch.Confirm(false); err != nil {
		t.Fatalf("confirm: %v", err)
	}
	rets := ch.NotifyReturn(make(chan amqp.Return, n))
	var dcs []*amqp.DeferredConfirmation
	for i := range n {
		dc, err := ch.PublishWithDeferredConfirm(exchange, key, mandatory, false, amqp.Publishing{
			DeliveryMode: amqp.Persistent, MessageId: fmt.Sprintf("%s-%d", tag, i), Body: []byte("x")})
		if err != nil {
			t.Fatalf("publish: %v", err)
		}
		dcs = append(dcs, dc)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	for _, dc := range dcs {
		ok, err := dc.WaitContext(ctx)
		switch {
		case err != nil:
		case ok:
			acked++
		default:
			nacked++
		}
	}
	for len(rets) > 0 {
		<-rets
		returned++
	}
	return acked, nacked, returned
}

func errText(err error) string {
	var ae *amqp.Error
	if errors.As(err, &ae) {
		return fmt.Sprintf("%d %s", ae.Code, ae.Reason)
	}
	if err == nil {
		return "ok"
	}
	return err.Error()
}

func lastLines(s string, n int) string {
	l := strings.Split(s, "\n")
	return strings.Join(l[max(len(l)-n, 0):], "\n")
}
