// Package storetest is the conformance suite of consumer.Store: the contract every backend of
// the consumer's dedup state must keep, checked without a broker. BoltStore passes it in
// package consumer's tests; another backend (a PostgreSQL inbox, say) runs it from its own:
//
//	func TestConformance(t *testing.T) {
//		storetest.Run(t, storetest.Harness[*bolt.Tx]{
//			Fresh: func(t *testing.T) func(t *testing.T) consumer.Store[*bolt.Tx] {
//				path := filepath.Join(t.TempDir(), "store.db")
//				return func(t *testing.T) consumer.Store[*bolt.Tx] {
//					s, err := consumer.OpenBoltStore(path, consumer.BoltOptions{})
//					require.NoError(t, err)
//					return s
//				}
//			},
//			Incr:  func(tx *bolt.Tx, key string) error { ... },
//			Count: func(tx *bolt.Tx, key string) (int64, error) { ... },
//		})
//	}
//
// # Guarantees
//
// Run checks, each in a subtest: that a transactional effect and its dedup mark commit together
// or not at all; that a failed (or panicking) effect is rolled back alone, the later ops of its
// stream are skipped with consumer.ErrSkipped and the rest of the batch commits; that after a
// commit whose deliveries were never acked (the store dropped and opened again, as after a crash)
// the redeliveries are duplicates and no effect is applied twice; that concurrent batches all
// commit, without lost updates to a key they share; that Load after reopening returns exactly the
// committed states; and the Claim, Scope, View and Close rules of consumer.Store.
//
// For a ScopeExclusive store the suite plays the Run's part: it keeps a dedup.Tracker loaded from
// Load, classifies with it and hands the resulting states in Batch.States. For a ScopeShared store
// it also checks that the store takes the decision itself: an op marked for a stamp already
// committed comes back with Verdict KindDuplicate and its Effect is not run. And, with two
// stores open on one state at once (two replicas), that the store implements
// consumer.SharedStore; that both committing the same stamps concurrently apply each effect
// exactly once, with exactly one KindNew verdict per stamp; that Peek returns what the other
// store committed; and that Batch.Expire on both at once reports a gap exactly once, does not
// report a number the other store committed, and reports nothing twice.
//
// # Concurrency
//
// Run calls Fresh, the opener and the Harness functions on the test goroutines only, except Incr
// and Count, which run inside the store's transactions on whatever goroutine the store uses.
//
// # Caveats
//
// A crash is simulated by closing the store without acking: the suite cannot kill its own
// process. Backends should add a test that SIGKILLs a process between commit and ack
// (consumer/crash_test.go does for BoltStore).
package storetest

import (
	"context"
	"testing"
	"time"

	"github.com/rabbitkit/rabbitkit/consumer"
	"github.com/rabbitkit/rabbitkit/consumer/dedup"
	"github.com/rabbitkit/rabbitkit/protocol"
)

// Harness adapts a backend with transactions of type T to the suite.
type Harness[T any] struct {
	// Fresh prepares empty state private to t (a file in t.TempDir(), a new schema) and returns
	// the function that opens a store on it. The suite opens a store, closes it and opens another
	// on the same state to check durability; it closes every store it opens. It holds two open
	// on one state at once only for a ScopeShared store (the "Shared" cases, as two replicas).
	Fresh func(t *testing.T) (open func(t *testing.T) consumer.Store[T])
	// Incr adds one to the counter named key in tx: the effect under test.
	Incr func(tx T, key string) error
	// Count returns the counter named key in tx, 0 when it does not exist.
	Count func(tx T, key string) (int64, error)
}

// Run runs the conformance suite against the backend h adapts.
func Run[T any](t *testing.T, h Harness[T]) {
	t.Helper()
	if h.Fresh == nil || h.Incr == nil || h.Count == nil {
		t.Fatal("storetest: Harness needs Fresh, Incr and Count")
	}
	s := &suite[T]{h: h}
	t.Run("ScopeAndClaim", s.scopeAndClaim)
	t.Run("EffectAndMarkAreAtomic", s.effectAndMarkAreAtomic)
	t.Run("FailedEffectIsRolledBackAlone", s.failedEffectIsRolledBackAlone)
	t.Run("CrashBetweenCommitAndAck", s.crashBetweenCommitAndAck)
	t.Run("ConcurrentBatches", s.concurrentBatches)
	t.Run("LoadAfterReopen", s.loadAfterReopen)
	t.Run("Close", s.close)
	t.Run("Shared", s.shared)
}

type suite[T any] struct{ h Harness[T] }

// open opens a store on state and closes it at the end of the test (Close is idempotent).
func (s *suite[T]) open(t *testing.T, open func(t *testing.T) consumer.Store[T]) consumer.Store[T] {
	t.Helper()
	st := open(t)
	if st == nil {
		t.Fatal("storetest: the opener returned a nil store")
	}
	t.Cleanup(func() { _ = st.Close() })
	return st
}

func (s *suite[T]) count(t *testing.T, st consumer.Store[T], key string) int64 {
	t.Helper()
	var n int64
	err := st.View(context.Background(), func(tx T) (err error) {
		n, err = s.h.Count(tx, key)
		return err
	})
	if err != nil {
		t.Fatalf("View: %v", err)
	}
	return n
}

// msg is a delivery of the suite: a stamp, and the counter its effect increments ("" for none).
type msg struct {
	stamp  protocol.Stamp
	effect string
	fail   error // the effect increments, then returns this error
	panics bool  // the effect increments, then panics
}

func stamp(stream string, seq int64) protocol.Stamp {
	return protocol.Stamp{Source: "storetest", Epoch: 1, Stream: stream, Seq: seq}
}

func keyOf(stream string) dedup.Key { return dedup.Key{Source: "storetest", Stream: stream} }

// window plays the Run's part: a dedup window loaded from the store, classifying deliveries and
// handing the states of what was applied to the store inside its transaction.
type window[T any] struct {
	s     *suite[T]
	tr    *dedup.Tracker
	calls int // States calls of the last batch
}

func (s *suite[T]) window(t *testing.T, st consumer.Store[T]) *window[T] {
	t.Helper()
	tr, err := dedup.New(dedup.Config{})
	if err != nil {
		t.Fatal(err)
	}
	states, err := st.Load(context.Background())
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	for _, x := range states {
		if err := tr.Load(x.Key, x.State); err != nil {
			t.Fatalf("Load returned a state the tracker cannot decode (stream %s): %v", x.Key, err)
		}
	}
	return &window[T]{s: s, tr: tr}
}

// batch builds the batch of msgs: every message is marked and, when it has an effect, runs it.
// Messages the window already knows are left out, as the Run acks them without an op.
func (w *window[T]) batch(msgs []msg) (*consumer.Batch[T], []int) {
	b := &consumer.Batch[T]{}
	var idx []int // index in msgs of each op
	for i, m := range msgs {
		if w.tr.Classify(m.stamp).Kind != dedup.KindNew {
			continue
		}
		op := consumer.Op[T]{Key: dedup.KeyOf(m.stamp), Stamp: m.stamp, Mark: true, Verdict: dedup.Verdict{Kind: dedup.KindNew}}
		if m.effect != "" {
			op.Effect = w.s.effect(m)
		}
		b.Ops = append(b.Ops, op)
		idx = append(idx, i)
	}
	w.calls = 0
	b.States = func(applied []bool) []consumer.StreamState {
		w.calls++
		now := time.Now()
		for i := range b.Ops {
			if applied[i] && b.Ops[i].Mark {
				w.tr.Commit(b.Ops[i].Stamp, 0, now)
			}
		}
		var out []consumer.StreamState
		for _, k := range w.tr.TakeDirty(nil) {
			buf, ok := w.tr.AppendState(nil, k)
			if !ok {
				buf = nil
			}
			out = append(out, consumer.StreamState{Key: k, State: buf})
		}
		return out
	}
	return b, idx
}

func (s *suite[T]) effect(m msg) func(tx T) error {
	return func(tx T) error {
		if err := s.h.Incr(tx, m.effect); err != nil {
			return err
		}
		if m.panics {
			panic("storetest: effect panics after its write")
		}
		return m.fail
	}
}

// commit commits msgs through w and fails the test on a Commit error.
func (w *window[T]) commit(t *testing.T, st consumer.Store[T], msgs ...msg) *consumer.Batch[T] {
	t.Helper()
	b, _ := w.batch(msgs)
	if err := st.Commit(context.Background(), b); err != nil {
		t.Fatalf("Commit: %v", err)
	}
	if st.Scope() == consumer.ScopeExclusive && len(b.Ops) > 0 && w.calls != 1 {
		t.Fatalf("Batch.States called %d times, want once (for the committed attempt)", w.calls)
	}
	return b
}
