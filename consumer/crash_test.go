package consumer_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
	"github.com/stretchr/testify/require"
	bolt "go.etcd.io/bbolt"

	"github.com/rabbitkit/rabbitkit/consumer"
	"github.com/rabbitkit/rabbitkit/consumer/dedup"
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
	childStates  = "RABBITKIT_CHILD_STATES"     // append the stream states of every commit to this file (stateRecorder)
	childExitOn  = "RABBITKIT_CHILD_EXIT_ON"    // the handler calls os.Exit(7) on this stamp
)

// killingStore SIGKILLs the process right after the commit that holds the marked effect: the mark
// and the effect are durable, the ack was never sent.
type killingStore struct {
	*consumer.BoltStore
	armed atomic.Bool
	rec   *stateRecorder // nil: none
}

func (k *killingStore) Commit(ctx context.Context, b *consumer.Batch[*bolt.Tx]) error {
	var done func()
	if k.rec != nil && b.States != nil {
		bb := *b // Ops shared: their Err is the caller's
		bb.States, done = k.rec.wrap(b.States)
		b = &bb
	}
	err := k.BoltStore.Commit(ctx, b)
	if err == nil && done != nil {
		done()
	}
	if err == nil && k.armed.Load() {
		_ = syscall.Kill(os.Getpid(), syscall.SIGKILL)
		select {} // never returns
	}
	return err
}

func crashChild() int {
	want, _ := strconv.Atoi(os.Getenv(childWant))
	killKey := os.Getenv(childKillKey)
	bs, err := consumer.OpenBoltStore(os.Getenv(childDB), consumer.ChildBoltOptions())
	if err != nil {
		fmt.Fprintln(os.Stderr, "open store:", err)
		return 2
	}
	store := &killingStore{BoltStore: bs}
	if p := os.Getenv(childStates); p != "" {
		f, err := os.OpenFile(p, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
		if err != nil {
			fmt.Fprintln(os.Stderr, "states file:", err)
			return 2
		}
		store.rec = &stateRecorder{f: f, prefix: strconv.Itoa(os.Getpid())}
	}
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
	exitOn := os.Getenv(childExitOn)
	err = c.RunTx(ctx, func(_ context.Context, tx *bolt.Tx, m *consumer.Message) error {
		if exitOn != "" && m.Stamp.String() == exitOn {
			os.Exit(7) // a handler that kills the process: no recover, no error returned
		}
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

func runChild(t *testing.T, f *fixture, want int, killKey string, env ...string) (*exec.Cmd, *strings.Builder) {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), childEnv+"=1", childURL+"="+f.url, childQueue+"="+f.queue, childDB+"="+f.path,
		childWant+"="+strconv.Itoa(want), childKillKey+"="+killKey)
	cmd.Env = append(cmd.Env, env...)
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

// stateRecorder writes what a child commits, for the parent to check Load against: a line with the
// stream states of a commit, written inside its transaction (so before it is durable), and a line
// "done" once Commit returned nil. A commit whose "done" line is missing may or may not be durable.
type stateRecorder struct {
	mu     sync.Mutex
	f      *os.File
	prefix string // the process: ids are unique over the children writing one file
	n      atomic.Int64
}

type stateLine struct {
	ID     string    `json:"id"`
	Done   bool      `json:"done,omitempty"`
	States []stateKV `json:"states,omitempty"`
}

type stateKV struct {
	K []byte `json:"k"` // dedup.AppendKey
	V []byte `json:"v"` // nil: deleted
}

func (r *stateRecorder) write(l stateLine) {
	b, _ := json.Marshal(l)
	r.mu.Lock()
	defer r.mu.Unlock()
	_, _ = r.f.Write(append(b, '\n')) // one write: a SIGKILL leaves whole lines (or a torn last one)
}

// wrap returns states, recording what it returns, and done, to be called once the commit succeeded.
func (r *stateRecorder) wrap(states func([]bool) []consumer.StreamState) (func([]bool) []consumer.StreamState, func()) {
	id := fmt.Sprint(r.prefix, "-", r.n.Add(1))
	return func(applied []bool) []consumer.StreamState {
		sts := states(applied)
		l := stateLine{ID: id}
		for _, st := range sts {
			l.States = append(l.States, stateKV{K: dedup.AppendKey(nil, st.Key), V: st.State})
		}
		r.write(l)
		return sts
	}, func() { r.write(stateLine{ID: id, Done: true}) }
}

// requireCommittedStates checks that Load, after a restart, returns the committed states: for each
// stream the state of its last commit that returned nil, or of one of its commits after that whose
// outcome the child did not see (the kill came first).
func requireCommittedStates(t *testing.T, dbPath, statesPath string) {
	t.Helper()
	raw, err := os.ReadFile(statesPath)
	require.NoError(t, err)
	type commit struct {
		id     string
		states []stateKV
	}
	var commits []commit
	done := map[string]bool{}
	for line := range strings.Lines(string(raw)) {
		var l stateLine
		if json.Unmarshal([]byte(line), &l) != nil {
			require.False(t, strings.HasSuffix(line, "\n"), "malformed line %q", line) // only a torn last line
			continue
		}
		if l.Done {
			done[l.ID] = true
		} else {
			commits = append(commits, commit{l.ID, l.States})
		}
	}
	type want struct {
		last  []byte   // state as of the last commit that returned nil; nil: none (or deleted)
		maybe [][]byte // states of later commits of unknown outcome (nil element: deleted)
	}
	wants := map[string]*want{}
	for _, c := range commits {
		for _, kv := range c.states {
			w := wants[string(kv.K)]
			if w == nil {
				w = &want{}
				wants[string(kv.K)] = w
			}
			if done[c.id] {
				w.last, w.maybe = kv.V, nil
			} else {
				w.maybe = append(w.maybe, kv.V)
			}
		}
	}
	require.NotEmpty(t, wants, "no commits recorded")
	s, err := consumer.OpenBoltStore(dbPath, consumer.BoltOptions{})
	require.NoError(t, err)
	defer s.Close()
	got, err := s.Load(context.Background())
	require.NoError(t, err)
	gotM := map[string][]byte{}
	for _, st := range got {
		gotM[string(dedup.AppendKey(nil, st.Key))] = st.State
	}
	exact := 0
	for k, w := range wants {
		g, ok := gotM[k]
		if !ok {
			g = nil
		}
		if slices.ContainsFunc(append([][]byte{w.last}, w.maybe...), func(v []byte) bool { return (v == nil) == (g == nil) && bytes.Equal(v, g) }) {
			if len(w.maybe) == 0 {
				exact++
			}
			continue
		}
		t.Fatalf("Load after restart: stream %q: state %x; committed %x, unknown outcome %x", k, g, w.last, w.maybe)
	}
	for k := range gotM {
		require.Contains(t, wants, k, "Load: stream %q never committed", k)
	}
	t.Logf("%d streams: %d exactly as committed, %d with a commit of unknown outcome", len(wants), exact, len(wants)-exact)
}

// logRecords counts the records in the store's stream log (a file of format 2), read offline.
func logRecords(t *testing.T, path string) int {
	t.Helper()
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: 5 * time.Second, ReadOnly: true})
	require.NoError(t, err)
	defer db.Close()
	n := 0
	require.NoError(t, db.View(func(tx *bolt.Tx) error {
		b := tx.Bucket([]byte("rabbitkit.consumer.log"))
		require.NotNil(t, b, "no stream log bucket")
		n = b.Stats().KeyN
		return nil
	}))
	return n
}

// The store's stream log under SIGKILL: the children fold it very often (EnvStoreFoldEvery) and are
// killed right after a commit that makes it due for a fold (durable, not folded, not acked), inside
// a fold's transaction, and at a random moment while folding after every commit. After each kill
// Load returns exactly the committed states, and in the end every effect is in the file once: the
// redeliveries of what was committed and not acked are duplicates.
func TestCrashStreamLogFold(t *testing.T) {
	f := newFixture(t, testbroker.SharedURL(t))
	ch := f.channel()
	states := f.path + ".states"
	rng := rand.New(rand.NewPCG(1, 2))
	names := make([]string, 80)
	for i := range names {
		names[i] = fmt.Sprintf("cust-%08x", rng.Uint32()) // random order, as customer ids
	}
	var want []string
	publish := func(from, to int64) {
		var msgs []amqp.Publishing
		for seq := from; seq <= to; seq++ {
			for _, i := range rng.Perm(len(names)) {
				msgs = append(msgs, stamped("src", names[i], 1, seq, "x"))
				want = append(want, key("src", names[i], 1, seq))
			}
		}
		f.publish(ch, msgs...)
	}
	foldOften := consumer.EnvStoreFoldEvery + "=2500" // about every three commits of 16 messages
	killed := func(what string, env ...string) {
		t.Helper()
		cmd, out := runChild(t, f, 0, "", append([]string{childStates + "=" + states}, env...)...)
		if !slices.ContainsFunc(env, func(e string) bool { return strings.HasPrefix(e, consumer.EnvStoreKillAt+"=") }) {
			time.Sleep(time.Duration(200+rng.IntN(400)) * time.Millisecond)
			require.NoError(t, cmd.Process.Signal(syscall.SIGKILL))
		}
		err := waitChild(t, cmd, out, 60*time.Second)
		require.True(t, killedBySIGKILL(err), "child killed %s: %v\n%s", what, err, out)
		db, err := bolt.Open(f.path, 0o600, &bolt.Options{Timeout: 5 * time.Second, ReadOnly: true})
		require.NoError(t, err)
		t.Logf("killed %s: %d of %d effects in the file", what, len(effects(t, db)), len(want))
		require.NoError(t, db.Close())
		requireCommittedStates(t, f.path, states)
	}
	completes := func(env ...string) string {
		t.Helper()
		cmd, out := runChild(t, f, len(want), "", append([]string{childStates + "=" + states}, env...)...)
		require.NoError(t, waitChild(t, cmd, out, 60*time.Second), "child to completion:\n%s", out)
		requireCommittedStates(t, f.path, states)
		return out.String()
	}

	publish(1, 6)
	// Right after a commit that makes the log due, before its fold and before the acks.
	killed("between a record and its fold", foldOften, consumer.EnvStoreKillAt+"=record:2")
	require.Positive(t, logRecords(t, f.path), "killed before the fold: the log holds records")
	require.Regexp(t, `duplicates=[1-9]`, completes(foldOften), "the committed, unacked deliveries came back as duplicates")

	publish(7, 12)
	killed("inside a fold", foldOften, consumer.EnvStoreKillAt+"=fold:2")
	require.Positive(t, logRecords(t, f.path), "killed inside the fold: the log is not emptied")
	publish(13, 40)
	killed("at random, folding after every commit", consumer.EnvStoreFoldEvery+"=1")
	completes(consumer.EnvStoreFoldEvery + "=1")

	db, err := bolt.Open(f.path, 0o600, &bolt.Options{Timeout: 5 * time.Second, ReadOnly: true})
	require.NoError(t, err)
	defer db.Close()
	requireExactlyOnce(t, effects(t, db), want)
	require.Zero(t, f.messages(ch, f.queue), "every delivery acked in the end")
}
