package integration

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
	"github.com/stretchr/testify/require"

	"github.com/rabbitkit/rabbitkit/consumer"
	"github.com/rabbitkit/rabbitkit/internal/testbroker"
	"github.com/rabbitkit/rabbitkit/internal/testutil"
	"github.com/rabbitkit/rabbitkit/protocol"
	"github.com/rabbitkit/rabbitkit/topology"
)

// The child process of TestQuorumDeliveryLimitLosesNothing: a rabbitkit consumer whose handler
// records each message it applies (one line per seq, fsync'd) and SIGKILLs its own process on a
// poison message, as a crash outside the handler's recover would.
const (
	qlChild   = "RK_QLIMIT_CHILD"
	qlURL     = "RK_QLIMIT_URL"
	qlQueue   = "RK_QLIMIT_QUEUE"
	qlDB      = "RK_QLIMIT_DB"
	qlApplied = "RK_QLIMIT_APPLIED"
	qlPoison  = "RK_QLIMIT_POISON"
)

// qlLimit is the queue's x-delivery-limit: a message returned by a crash more often is taken out
// of the queue by the broker.
const qlLimit = 2

func qlTopology(queue string) topology.Topology {
	return topology.Topology{Queues: []topology.Queue{{Name: queue, Type: topology.Quorum, Args: amqp.Table{"x-delivery-limit": int64(qlLimit)}}}}
}

func TestQuorumLimitChild(t *testing.T) {
	if os.Getenv(qlChild) == "" {
		t.Skip("the child process of TestQuorumDeliveryLimitLosesNothing")
	}
	poison := map[int64]bool{}
	for _, s := range strings.Split(os.Getenv(qlPoison), ",") {
		n, _ := strconv.ParseInt(s, 10, 64)
		poison[n] = true
	}
	f, err := os.OpenFile(os.Getenv(qlApplied), os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
	require.NoError(t, err)
	defer f.Close()
	q := os.Getenv(qlQueue)
	c, err := consumer.New(consumer.Config{URLs: []string{os.Getenv(qlURL)}, Queue: q, Topology: qlTopology(q),
		StorePath: os.Getenv(qlDB), Prefetch: 20, ConnectionName: "qlimit-child"})
	require.NoError(t, err)
	defer func() { _ = c.Close(context.Background()) }()
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM)
	defer stop()
	err = c.Run(ctx, func(_ context.Context, m *consumer.Message) error {
		if os.Getenv("RABBITKIT_TEST_LOG") != "" {
			fmt.Fprintln(os.Stderr, "handle", m.Stamp, m.Stamped, m.Properties.MessageID)
		}
		if poison[m.Stamp.Seq] {
			_ = syscall.Kill(os.Getpid(), syscall.SIGKILL)
			select {}
		}
		if _, err := fmt.Fprintf(f, "%d\n", m.Stamp.Seq); err != nil {
			return err
		}
		return f.Sync()
	})
	if err != nil {
		require.ErrorIs(t, err, context.Canceled)
	}
}

// A quorum queue declared by rabbitkit with a small x-delivery-limit, and a consumer that crashes
// (SIGKILL) on some messages again and again: every crash returns its whole prefetch window, so
// the poison messages and their neighbours pass the limit. Nothing may be lost: each message is
// applied or in the parking queue (dead-lettered there by the broker, with x-death). On 3.10
// without a dead-letter target the broker drops them without a trace.
func TestQuorumDeliveryLimitLosesNothing(t *testing.T) {
	testbroker.SkipShort(t)
	if os.Getenv(qlChild) != "" {
		t.Skip("in the child")
	}
	n := testbroker.StartNode(t)
	dir := t.TempDir()
	q := testbroker.Name(t, "qlimit")
	const total = 100
	poison := []int64{10, 60}

	// Declared by the kit, as the consumer and a publisher do.
	conn, err := amqp.Dial(n.URL)
	require.NoError(t, err)
	defer conn.Close()
	ch, err := conn.Channel()
	require.NoError(t, err)
	require.NoError(t, qlTopology(q).Declare(ch))
	require.NoError(t, ch.Confirm(false))
	for i := int64(1); i <= total; i++ {
		id := protocol.Stamp{Source: "qlimit", Epoch: 1, Stream: "s", Seq: i}.String()
		dc, err := ch.PublishWithDeferredConfirmWithContext(context.Background(), "", q, true, false,
			amqp.Publishing{MessageId: id, DeliveryMode: amqp.Persistent, Body: []byte(id)})
		require.NoError(t, err)
		ok, err := dc.WaitContext(context.Background())
		require.NoError(t, err)
		require.True(t, ok)
	}

	applied := filepath.Join(dir, "applied")
	env := append(os.Environ(), qlChild+"=1", qlURL+"="+n.URL, qlQueue+"="+q, qlDB+"="+filepath.Join(dir, "store.db"),
		qlApplied+"="+applied, qlPoison+"="+strings.Trim(strings.Join(strings.Fields(fmt.Sprint(poison)), ","), "[]"))
	deadline := time.Now().Add(50 * time.Second)
	crashes := 0
	for {
		require.True(t, time.Now().Before(deadline), "not done in time after %d crashes", crashes)
		cmd := exec.Command(os.Args[0], "-test.run=^TestQuorumLimitChild$", "-test.v")
		cmd.Env = env
		cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
		var out strings.Builder
		cmd.Stdout, cmd.Stderr = &out, &out
		require.NoError(t, cmd.Start())
		done := make(chan error, 1)
		go func() { done <- cmd.Wait() }()
		started := time.Now()
		var exitErr error
		exited := false
		for !exited {
			select {
			case exitErr = <-done:
				exited = true
				continue
			case <-time.After(200 * time.Millisecond):
			}
			if time.Since(started) < 2*time.Second {
				continue
			}
			qi, err := ch.QueueDeclarePassive(q, true, false, false, false, nil)
			require.NoError(t, err)
			if qi.Messages == 0 {
				// Idle with nothing ready: stop it cleanly (its last acks go out), then look again.
				require.NoError(t, cmd.Process.Signal(syscall.SIGTERM))
				select {
				case exitErr = <-done:
				case <-time.After(20 * time.Second):
					_ = cmd.Process.Kill()
					<-done
					t.Fatalf("child did not stop:\n%s", out.String())
				}
				require.NoError(t, exitErr, out.String())
				exited = true
			}
		}
		if exitErr != nil {
			require.True(t, qlKilled(exitErr), "child failed: %v\n%s", exitErr, out.String())
			crashes++
			continue
		}
		qi, err := ch.QueueDeclarePassive(q, true, false, false, false, nil)
		require.NoError(t, err)
		if qi.Messages == 0 {
			break
		}
	}

	got := map[int64]string{} // seq -> "applied" or the parking reason
	fa, err := os.Open(applied)
	require.NoError(t, err)
	defer fa.Close()
	sc := bufio.NewScanner(fa)
	for sc.Scan() {
		s, err := strconv.ParseInt(sc.Text(), 10, 64)
		require.NoError(t, err)
		got[s] = "applied"
	}
	require.NoError(t, sc.Err())
	byLimit := 0
	for {
		d, ok, err := ch.Get(topology.ParkingQueueOf(q), true)
		require.NoError(t, err)
		if !ok {
			break
		}
		st, err := protocol.ParseMessageID(d.MessageId)
		require.NoError(t, err)
		reason, _ := d.Headers["x-first-death-reason"].(string)
		if reason == "delivery_limit" {
			byLimit++
		} else if r, ok := d.Headers[protocol.HeaderParkReason].(string); ok {
			reason = "parked by the consumer: " + r
		}
		require.NotEmpty(t, reason, "message %s in the parking queue without a reason: %v", d.MessageId, d.Headers)
		got[st.Seq] = reason
	}
	var lost []int64
	for i := int64(1); i <= total; i++ {
		if _, ok := got[i]; !ok {
			lost = append(lost, i)
		}
	}
	t.Logf("%d crashes; %d applied or parked, %d dead-lettered by the delivery limit", crashes, len(got), byLimit)
	require.Empty(t, lost, "lost: neither applied nor parked")
	for _, p := range poison {
		require.NotEqual(t, "applied", got[p], "poison message %d", p)
	}
	require.GreaterOrEqual(t, crashes, qlLimit+1)
	require.Positive(t, byLimit, "the broker's delivery limit dead-lettered to the parking queue")
	require.True(t, slices.ContainsFunc(poison, func(p int64) bool { return got[p] == "delivery_limit" }),
		"a poison message went past the limit: %v", got)
}

// qlKilled reports whether the child died of SIGKILL.
func qlKilled(err error) bool {
	var ee *exec.ExitError
	if !errors.As(err, &ee) {
		return false
	}
	ws, ok := ee.Sys().(syscall.WaitStatus)
	return ok && ws.Signaled() && ws.Signal() == syscall.SIGKILL
}

// A consumer started on a quorum queue an older rabbitkit declared (no dead-letter arguments) is
// not stopped by the 406 of the new declaration: the declaration is tried on a channel of its own
// (Topology.DeclareConn), so the consumer consumes at its first attempt, and warns once with the
// policy to apply.
func TestConsumerOnOldQuorumQueueWarns(t *testing.T) {
	url := testbroker.SharedURL(t)
	q := testbroker.Name(t, "qold-consumer")
	testbroker.DeleteQueues(t, url, q, q+".parked")
	conn, err := amqp.Dial(url)
	require.NoError(t, err)
	defer conn.Close()
	ch, err := conn.Channel()
	require.NoError(t, err)
	_, err = ch.QueueDeclare(q, true, false, false, false, amqp.Table{"x-queue-type": "quorum"}) // as before the defaults
	require.NoError(t, err)
	id := protocol.Stamp{Source: "qold", Epoch: 1, Stream: "s", Seq: 1}.String()
	require.NoError(t, ch.Publish("", q, false, false, amqp.Publishing{MessageId: id, DeliveryMode: amqp.Persistent, Body: []byte("x")}))

	var logs testutil.SyncBuffer
	c, err := consumer.New(consumer.Config{URLs: []string{url}, Queue: q,
		Topology:  topology.Topology{Queues: []topology.Queue{{Name: q, Type: topology.Quorum}}}, // its own Args: none, as before
		StorePath: filepath.Join(t.TempDir(), "store.db"), Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	require.NoError(t, err)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	handled := make(chan string, 1)
	done := make(chan error, 1)
	go func() {
		done <- c.Run(ctx, func(_ context.Context, m *consumer.Message) error {
			select {
			case handled <- m.Stamp.String():
			default:
			}
			return nil
		})
	}()
	select {
	case got := <-handled:
		require.Equal(t, id, got)
	case err := <-done:
		t.Fatalf("Run returned %v:\n%s", err, logs.String())
	case <-ctx.Done():
		t.Fatalf("not consumed:\n%s", logs.String())
	}
	cancel()
	if err := <-done; err != nil {
		require.ErrorIs(t, err, context.Canceled)
	}
	require.NoError(t, c.Close(context.Background()))
	out := logs.String()
	require.NotContains(t, out, "level=ERROR", "the first session must come up: no failed attempt")
	require.Contains(t, out, "DROPS messages")
	require.Contains(t, out, "rabbitmqctl set_policy")
	require.Equal(t, 1, strings.Count(out, "quorum queue exists without a dead-letter target"), out)
}
