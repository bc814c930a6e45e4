package consumer_test

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
	"github.com/stretchr/testify/require"
	bolt "go.etcd.io/bbolt"

	"github.com/rabbitkit/rabbitkit/consumer"
	"github.com/rabbitkit/rabbitkit/internal/testbroker"
	"github.com/rabbitkit/rabbitkit/metrics"
	"github.com/rabbitkit/rabbitkit/topology"
)

// The child process: the test binary re-executed with these variables set.
const (
	childEnv     = "RABBITKIT_CONSUMER_CRASH_CHILD" // "1"
	childURL     = "RABBITKIT_CHILD_URL"
	childQueue   = "RABBITKIT_CHILD_QUEUE"
	childDB      = "RABBITKIT_CHILD_DB"
	childWant    = "RABBITKIT_CHILD_WANT"       // exit cleanly once this many distinct effects are in the file
	childKillKey = "RABBITKIT_CHILD_KILL_AFTER" // SIGKILL itself right after the commit holding this stamp's effect
)

// killingStore SIGKILLs the process right after the commit that holds the marked effect: the mark
// and the effect are durable, the ack was never sent.
type killingStore struct {
	*consumer.BoltStore
	armed atomic.Bool
}

func (k *killingStore) Commit(ctx context.Context, b *consumer.Batch[*bolt.Tx]) error {
	err := k.BoltStore.Commit(ctx, b)
	if err == nil && k.armed.Load() {
		_ = syscall.Kill(os.Getpid(), syscall.SIGKILL)
		select {} // never returns
	}
	return err
}

func crashChild() int {
	want, _ := strconv.Atoi(os.Getenv(childWant))
	killKey := os.Getenv(childKillKey)
	bs, err := consumer.OpenBoltStore(os.Getenv(childDB), consumer.BoltOptions{})
	if err != nil {
		fmt.Fprintln(os.Stderr, "open store:", err)
		return 2
	}
	store := &killingStore{BoltStore: bs}
	mem := &metrics.Memory{}
	q := os.Getenv(childQueue)
	c, err := consumer.NewWithStore(consumer.Config{
		URLs: []string{os.Getenv(childURL)}, Queue: q, Metrics: mem, Logger: quietLogger(),
		Topology: topology.Topology{Queues: []topology.Queue{{Name: q}}},
		MaxBatch: 16, // several commits, so that a kill lands between them
	}, store)
	if err != nil {
		fmt.Fprintln(os.Stderr, "new:", err)
		return 2
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if want > 0 {
		// Stop once every message has its effect and deliveries have been quiet for a while (the
		// redelivered duplicates are acked too); Run then drains.
		go func() {
			last, quiet := -1.0, 0
			for ctx.Err() == nil {
				time.Sleep(100 * time.Millisecond)
				var n int
				_ = c.View(ctx, func(tx *bolt.Tx) error {
					if b := tx.Bucket(effectsBucket); b != nil {
						n = b.Stats().KeyN
					}
					return nil
				})
				act := mem.Get(consumer.MetricDuplicates) + mem.Get(consumer.MetricHandled)
				if act == last {
					quiet++
				} else {
					last, quiet = act, 0
				}
				if n >= want && quiet >= 5 {
					cancel()
				}
			}
		}()
	}
	err = c.RunTx(ctx, func(_ context.Context, tx *bolt.Tx, m *consumer.Message) error {
		if err := countEffect(tx, m); err != nil {
			return err
		}
		if m.Stamp.String() == killKey {
			store.armed.Store(true)
		}
		return nil
	})
	_ = bs.Close()
	if err != nil && !errors.Is(err, context.Canceled) {
		fmt.Fprintln(os.Stderr, "run:", err)
		return 3
	}
	fmt.Printf("duplicates=%d handled=%d\n", int(mem.Get(consumer.MetricDuplicates)), int(mem.Get(consumer.MetricHandled)))
	return 0
}

func runChild(t *testing.T, f *fixture, want int, killKey string) (*exec.Cmd, *strings.Builder) {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), childEnv+"=1", childURL+"="+f.url, childQueue+"="+f.queue, childDB+"="+f.path,
		childWant+"="+strconv.Itoa(want), childKillKey+"="+killKey)
	var out strings.Builder
	cmd.Stdout = &out
	cmd.Stderr = &out
	require.NoError(t, cmd.Start())
	return cmd, &out
}

func waitChild(t *testing.T, cmd *exec.Cmd, out *strings.Builder, timeout time.Duration) error {
	t.Helper()
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		return err
	case <-time.After(timeout):
		_ = cmd.Process.Kill()
		<-done
		t.Fatalf("child did not finish in %s:\n%s", timeout, out)
		return nil
	}
}

func killedBySIGKILL(err error) bool {
	var ee *exec.ExitError
	if !errors.As(err, &ee) {
		return false
	}
	ws, ok := ee.Sys().(syscall.WaitStatus)
	return ok && ws.Signaled() && ws.Signal() == syscall.SIGKILL
}

// A consumer SIGKILLed after the store commit and before the ack, and another killed at a random
// moment, lose and repeat nothing: every message's effect, written by a TxHandler in the same
// bbolt transaction as its dedup mark, is in the file exactly once; the deliveries that were
// committed but not acked come back and are dropped as duplicates.
func TestCrashBetweenCommitAndAck(t *testing.T) {
	f := newFixture(t, testbroker.SharedURL(t))
	ch := f.channel()
	var msgs []amqp.Publishing
	for seq := int64(1); seq <= 100; seq++ {
		msgs = append(msgs, stamped("src", "a", 1, seq, "x"), stamped("src", "b", 1, seq, "x"))
	}
	f.publish(ch, msgs...)

	// 1. Killed by itself right after the commit holding a/30.
	cmd, out := runChild(t, f, 0, key("src", "a", 1, 30))
	err := waitChild(t, cmd, out, 60*time.Second)
	require.True(t, killedBySIGKILL(err), "child A: %v\n%s", err, out)
	db, err := bolt.Open(f.path, 0o600, &bolt.Options{Timeout: 5 * time.Second, ReadOnly: true})
	require.NoError(t, err)
	got := effects(t, db)
	require.NoError(t, db.Close())
	require.Equal(t, uint64(1), got[key("src", "a", 1, 30)], "a/30 committed before the kill")
	require.Less(t, len(got), 200)

	// 2. Runs to completion: the committed-but-unacked deliveries are redelivered and dropped.
	cmd, out = runChild(t, f, 200, "")
	require.NoError(t, waitChild(t, cmd, out, 60*time.Second), "child B:\n%s", out)
	require.Regexp(t, `duplicates=[1-9]`, out.String())

	// 3. More messages; a child killed by us at a random moment, then one that finishes.
	msgs = msgs[:0]
	for seq := int64(101); seq <= 200; seq++ {
		msgs = append(msgs, stamped("src", "a", 1, seq, "x"), stamped("src", "b", 1, seq, "x"))
	}
	f.publish(ch, msgs...)
	cmd, out = runChild(t, f, 0, "")
	time.Sleep(time.Duration(150+rand.IntN(400)) * time.Millisecond)
	require.NoError(t, cmd.Process.Signal(syscall.SIGKILL))
	err = waitChild(t, cmd, out, 30*time.Second)
	require.True(t, killedBySIGKILL(err), "child C: %v\n%s", err, out)
	cmd, out = runChild(t, f, 400, "")
	require.NoError(t, waitChild(t, cmd, out, 60*time.Second), "child D:\n%s", out)

	db, err = bolt.Open(f.path, 0o600, &bolt.Options{Timeout: 5 * time.Second, ReadOnly: true})
	require.NoError(t, err)
	defer db.Close()
	want := append(seqKeys("src", "a", 1, 1, 200), seqKeys("src", "b", 1, 1, 200)...)
	requireExactlyOnce(t, effects(t, db), want)
	require.Zero(t, f.messages(ch, f.queue), "every delivery acked in the end")
}
