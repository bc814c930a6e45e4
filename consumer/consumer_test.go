package consumer_test

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
	"github.com/stretchr/testify/require"
	bolt "go.etcd.io/bbolt"

	"github.com/rabbitkit/rabbitkit/consumer"
	"github.com/rabbitkit/rabbitkit/consumer/dedup"
	"github.com/rabbitkit/rabbitkit/internal/testbroker"
	"github.com/rabbitkit/rabbitkit/internal/testutil"
	"github.com/rabbitkit/rabbitkit/protocol"
)

// Duplicates in the queue (a publisher resending after a lost confirm, shuffled as requeues
// would) are dropped: one effect per stamp, every delivery acked, nothing reported as a gap.
func TestDuplicatesInjected(t *testing.T) {
	for _, workers := range []int{1, 3} {
		t.Run(map[int]string{1: "one worker", 3: "three workers"}[workers], func(t *testing.T) {
			f := newFixture(t, testbroker.SharedURL(t))
			ch := f.channel()
			var msgs []amqp.Publishing
			var want []string
			for _, stream := range []string{"a", "b", "c"} {
				for seq := int64(1); seq <= 40; seq++ {
					m := stamped("src", stream, 7, seq, "body")
					msgs = append(msgs, m, m) // every message twice
					want = append(want, key("src", stream, 7, seq))
				}
			}
			// Reorder locally (a resend after a reconnect lands after newer messages).
			for i := range msgs {
				j := i + rand.IntN(min(6, len(msgs)-i))
				msgs[i], msgs[j] = msgs[j], msgs[i]
			}
			f.publish(ch, msgs...)

			cfg := f.config()
			cfg.Workers = workers
			cfg.Dedup.GapGrace = 200 * time.Millisecond
			var gaps sync.Map
			cfg.OnGap = func(ev dedup.Event) { gaps.Store(ev.String(), true) }
			c, err := consumer.New(cfg)
			require.NoError(t, err)
			run := start(t, c, nil, func(_ context.Context, tx *bolt.Tx, m *consumer.Message) error { return countEffect(tx, m) })
			testutil.Eventually(t, 30*time.Second, "all effects", func() bool { return len(effectsOf(t, c)) == len(want) })
			testutil.Eventually(t, 10*time.Second, "duplicates counted", func() bool { return f.mem.Get(consumer.MetricDuplicates) == float64(len(want)) })
			time.Sleep(400 * time.Millisecond) // two gap graces: reordering must not be reported
			run.stop(t)
			requireExactlyOnce(t, effectsOf(t, c), want)
			require.Equal(t, float64(len(want)), f.mem.Get(consumer.MetricHandled))
			require.Zero(t, f.messages(ch, f.queue), "every delivery acked")
			gaps.Range(func(k, _ any) bool { t.Errorf("unexpected gap report %v", k); return true })
		})
	}
}

// A handler that always fails parks its message after MaxAttempts: the message is in the parking
// queue with its headers, body and the reason; the original is acked; its sequence number is
// accounted for (no gap, and a redelivery is a duplicate); the rest of the stream is handled.
func TestPoisonMessageParked(t *testing.T) {
	f := newFixture(t, testbroker.SharedURL(t))
	ch := f.channel()
	f.publish(ch, stamped("src", "s", 1, 1, "ok"), stamped("src", "s", 1, 2, "poison"), stamped("src", "s", 1, 3, "ok"))
	cfg := f.config()
	cfg.MaxAttempts = 3
	cfg.Dedup.GapGrace = 100 * time.Millisecond
	var mu sync.Mutex
	var parked []consumer.Parked
	var gapped []dedup.Event
	cfg.OnParked = func(p consumer.Parked) { mu.Lock(); parked = append(parked, p); mu.Unlock() }
	cfg.OnGap = func(ev dedup.Event) { mu.Lock(); gapped = append(gapped, ev); mu.Unlock() }
	c, err := consumer.New(cfg)
	require.NoError(t, err)
	var cnt counter
	attempts := 0
	run := start(t, c, func(_ context.Context, m *consumer.Message) error {
		if string(m.Body) == "poison" {
			attempts++
			if attempts == 2 {
				panic("boom") // a panic counts as a failed attempt
			}
			return errors.New("cannot apply")
		}
		cnt.add(m)
		return nil
	}, nil)
	testutil.Eventually(t, 20*time.Second, "parked", func() bool { return f.messages(ch, f.parked) == 1 })
	testutil.Eventually(t, 10*time.Second, "handled", func() bool { return len(cnt.snapshot()) == 2 })
	// A redelivery of the parked message (e.g. a resend) is now a duplicate.
	f.publish(ch, stamped("src", "s", 1, 2, "poison"))
	testutil.Eventually(t, 10*time.Second, "duplicate dropped", func() bool { return f.mem.Get(consumer.MetricDuplicates) == 1 })
	time.Sleep(300 * time.Millisecond)
	run.stop(t)
	require.Equal(t, 3, attempts)
	requireExactlyOnce(t, cnt.snapshot(), []string{key("src", "s", 1, 1), key("src", "s", 1, 3)})
	require.Zero(t, f.messages(ch, f.queue), "original acked")
	mu.Lock()
	require.Len(t, parked, 1)
	require.True(t, parked[0].Accounted)
	require.Contains(t, parked[0].Reason, "cannot apply")
	require.Empty(t, gapped, "a parked seq is not a gap")
	mu.Unlock()

	d, ok, err := ch.Get(f.parked, true)
	require.NoError(t, err)
	require.True(t, ok)
	require.Equal(t, "poison", string(d.Body))
	require.Contains(t, d.Headers[protocol.HeaderParkReason], "handler failed 3 times")
	require.Equal(t, f.queue, d.Headers[protocol.HeaderParkQueue])
	require.Equal(t, "rk2:src:1:s:2", d.MessageId, "the parked copy keeps its stamp")
}

// Every kind of bad input is handled without crashing, blocking or poisoning the state; each
// real message still gets exactly one effect.
func TestBadInputs(t *testing.T) {
	type want struct {
		effects []string // effect keys, each exactly once
		parked  int
		reason  string // substring of the parked reason
	}
	plain := func(body string) amqp.Publishing { return amqp.Publishing{Body: []byte(body)} }
	withHeaders := func(h amqp.Table, body string) amqp.Publishing {
		return amqp.Publishing{Headers: h, Body: []byte(body)}
	}
	withMsgID := func(id, body string) amqp.Publishing { return amqp.Publishing{MessageId: id, Body: []byte(body)} }
	withBoth := func(v2, v1 amqp.Publishing) amqp.Publishing { v2.Headers = v1.Headers; return v2 }
	withID := func(id string, m amqp.Publishing) amqp.Publishing { // the caller's message-id: the stamp moves to rk-stamp
		m.Headers, m.MessageId = amqp.Table{protocol.HeaderStamp: m.MessageId}, id
		return m
	}
	tests := []struct {
		name      string
		policy    consumer.NoStampPolicy
		msgs      []amqp.Publishing
		want      want
		conflicts int
	}{
		{"no headers, pass-through", consumer.NoStampPassThrough,
			[]amqp.Publishing{plain("x"), stamped("s", "a", 1, 1, "b")},
			want{effects: []string{"unstamped/x", key("s", "a", 1, 1)}}, 0},
		{"no headers, strict", consumer.NoStampPark,
			[]amqp.Publishing{plain("x"), stamped("s", "a", 1, 1, "b")},
			want{effects: []string{key("s", "a", 1, 1)}, parked: 1, reason: "no rabbitkit stamp"}, 0},
		{"ill-typed seq", consumer.NoStampPassThrough,
			[]amqp.Publishing{withHeaders(amqp.Table{"rk-source": "s", "rk-stream": "a", "rk-epoch": int64(1), "rk-seq": "one"}, "x"), stamped("s", "a", 1, 1, "b")},
			want{effects: []string{key("s", "a", 1, 1)}, parked: 1, reason: "rk-seq has type string"}, 0},
		{"missing header", consumer.NoStampPassThrough,
			[]amqp.Publishing{withHeaders(amqp.Table{"rk-source": "s", "rk-seq": int64(1)}, "x"), stamped("s", "a", 1, 1, "b")},
			want{effects: []string{key("s", "a", 1, 1)}, parked: 1, reason: "missing"}, 0},
		{"negative seq", consumer.NoStampPassThrough,
			[]amqp.Publishing{withHeaders(amqp.Table{"rk-source": "s", "rk-stream": "a", "rk-epoch": int64(1), "rk-seq": int64(-5)}, "x"), stamped("s", "a", 1, 1, "b")},
			want{effects: []string{key("s", "a", 1, 1)}, parked: 1, reason: "want >= 1"}, 0},
		{"2^62 jump then real messages", consumer.NoStampPassThrough,
			[]amqp.Publishing{stamped("s", "a", 1, 1, "b"), stamped("s", "a", 1, 1<<62, "evil"), stamped("s", "a", 1, 2, "b"), stamped("s", "a", 1, 3, "b")},
			want{effects: seqKeys("s", "a", 1, 1, 3), parked: 1, reason: "suspicious"}, 0},
		{"v1 and v2 stamps of one message are one message", consumer.NoStampPassThrough,
			[]amqp.Publishing{stampedV1("s", "a", 1, 1, "b"), stamped("s", "a", 1, 1, "b"), stamped("s", "a", 1, 2, "b"), stampedV1("s", "a", 1, 2, "b")},
			want{effects: seqKeys("s", "a", 1, 1, 2)}, 0},
		{"v1 and v2 disagree", consumer.NoStampPassThrough,
			[]amqp.Publishing{withBoth(stamped("s", "a", 1, 7, "x"), stampedV1("s", "a", 1, 1, "x")), stamped("s", "a", 1, 1, "b")},
			want{effects: []string{key("s", "a", 1, 1)}, parked: 1, reason: "disagree"}, 0},
		{"caller's message-id, stamp in rk-stamp", consumer.NoStampPassThrough,
			[]amqp.Publishing{withID("order-1", stamped("s", "a", 1, 1, "b")), withID("order-1", stamped("s", "a", 1, 1, "b")), stamped("s", "a", 1, 2, "b")},
			want{effects: seqKeys("s", "a", 1, 1, 2)}, 0},
		{"v2 2^62 jump", consumer.NoStampPassThrough,
			[]amqp.Publishing{stamped("s", "a", 1, 1, "b"), withMsgID("rk2:s:1:a:4611686018427387904", "evil"), stamped("s", "a", 1, 2, "b")},
			want{effects: seqKeys("s", "a", 1, 1, 2), parked: 1, reason: "suspicious"}, 0},
		{"v2 unknown version", consumer.NoStampPassThrough,
			[]amqp.Publishing{withMsgID("rk3:s:1:a:1", "x"), stamped("s", "a", 1, 1, "b")},
			want{effects: []string{key("s", "a", 1, 1)}, parked: 1, reason: "rk3 is not supported"}, 0},
		{"v2 signed seq", consumer.NoStampPassThrough,
			[]amqp.Publishing{withMsgID("rk2:s:1:a:-1", "x"), stamped("s", "a", 1, 1, "b")},
			want{effects: []string{key("s", "a", 1, 1)}, parked: 1, reason: "not a decimal number"}, 0},
		{"v2 leading zero", consumer.NoStampPassThrough,
			[]amqp.Publishing{withMsgID("rk2:s:1:a:01", "x"), stamped("s", "a", 1, 1, "b")},
			want{effects: []string{key("s", "a", 1, 1)}, parked: 1, reason: "leading zero"}, 0},
		{"v2 overflow", consumer.NoStampPassThrough,
			[]amqp.Publishing{withMsgID("rk2:s:1:a:9223372036854775808", "x"), stamped("s", "a", 1, 1, "b")},
			want{effects: []string{key("s", "a", 1, 1)}, parked: 1, reason: "overflows"}, 0},
		{"v2 bad escape", consumer.NoStampPassThrough,
			[]amqp.Publishing{withMsgID("rk2:s:1:a%zz:1", "x"), stamped("s", "a", 1, 1, "b")},
			want{effects: []string{key("s", "a", 1, 1)}, parked: 1, reason: "bad escape"}, 0},
		{"v2 trailing bytes", consumer.NoStampPassThrough,
			[]amqp.Publishing{withMsgID("rk2:s:1:a:1:2", "x"), stamped("s", "a", 1, 1, "b")},
			want{effects: []string{key("s", "a", 1, 1)}, parked: 1, reason: "not a decimal number"}, 0},
		{"rk-stamp that is not a stamp", consumer.NoStampPassThrough,
			[]amqp.Publishing{withHeaders(amqp.Table{protocol.HeaderStamp: "s/1/a/1"}, "x"), stamped("s", "a", 1, 1, "b")},
			want{effects: []string{key("s", "a", 1, 1)}, parked: 1, reason: "does not start with"}, 0},
		{"same stamp, different body", consumer.NoStampPassThrough,
			[]amqp.Publishing{stamped("s", "a", 1, 1, "first"), stamped("s", "a", 1, 2, "b"), stamped("s", "a", 1, 1, "second")},
			want{effects: seqKeys("s", "a", 1, 1, 2)}, 1},
	}
	for _, tt := range tests {
		for _, tx := range []bool{true, false} {
			t.Run(fmt.Sprintf("%s/tx=%v", tt.name, tx), func(t *testing.T) {
				f := newFixture(t, testbroker.SharedURL(t))
				ch := f.channel()
				f.publish(ch, tt.msgs...)
				cfg := f.config()
				cfg.NoStamp = tt.policy
				cfg.Workers = 2
				var mu sync.Mutex
				var conflicts []consumer.Conflict
				var reasons []string
				cfg.OnConflict = func(c consumer.Conflict) { mu.Lock(); conflicts = append(conflicts, c); mu.Unlock() }
				cfg.OnParked = func(p consumer.Parked) { mu.Lock(); reasons = append(reasons, p.Reason); mu.Unlock() }
				c, err := consumer.New(cfg)
				require.NoError(t, err)
				var cnt counter
				var run *running
				if tx {
					run = start(t, c, nil, func(_ context.Context, tx *bolt.Tx, m *consumer.Message) error { return countEffect(tx, m) })
				} else {
					run = start(t, c, func(_ context.Context, m *consumer.Message) error { cnt.add(m); return nil }, nil)
				}
				got := func() map[string]uint64 {
					if tx {
						return effectsOf(t, c)
					}
					out := map[string]uint64{}
					for k, v := range cnt.snapshot() {
						out[k] = uint64(v)
					}
					return out
				}
				testutil.Eventually(t, 20*time.Second, "all deliveries acked", func() bool {
					return len(got()) == len(tt.want.effects) && f.messages(ch, f.queue) == 0 && f.messages(ch, f.parked) == tt.want.parked
				})
				run.stop(t)
				requireExactlyOnce(t, got(), tt.want.effects)
				mu.Lock()
				defer mu.Unlock()
				require.Len(t, reasons, tt.want.parked)
				for _, r := range reasons {
					require.Contains(t, r, tt.want.reason)
				}
				require.Len(t, conflicts, tt.conflicts)
			})
		}
	}
}

// A transactional handler that fails is rolled back alone: the other messages of its batch
// commit, the later messages of its stream wait for it, and it succeeds on a later attempt with
// exactly one effect.
func TestTxHandlerRetryKeepsStreamOrder(t *testing.T) {
	f := newFixture(t, testbroker.SharedURL(t))
	ch := f.channel()
	var msgs []amqp.Publishing
	for seq := int64(1); seq <= 20; seq++ {
		msgs = append(msgs, stamped("s", "a", 1, seq, "x"), stamped("s", "b", 1, seq, "x"))
	}
	f.publish(ch, msgs...)
	cfg := f.config()
	c, err := consumer.New(cfg)
	require.NoError(t, err)
	var order []int64 // effects of stream a, in commit order, read back from the file
	failures := 0
	run := start(t, c, nil, func(_ context.Context, tx *bolt.Tx, m *consumer.Message) error {
		if m.Stamp.Stream == "a" && m.Stamp.Seq == 5 && m.Attempt < 3 {
			failures++
			return errors.New("transient")
		}
		if err := countEffect(tx, m); err != nil {
			return err
		}
		if m.Stamp.Stream == "a" {
			b, err := tx.CreateBucketIfNotExists([]byte("order"))
			if err != nil {
				return err
			}
			n, _ := b.NextSequence()
			return b.Put(binaryKey(n), binaryKey(uint64(m.Stamp.Seq)))
		}
		return nil
	})
	testutil.Eventually(t, 20*time.Second, "all effects", func() bool { return len(effectsOf(t, c)) == 40 })
	run.stop(t)
	want := append(seqKeys("s", "a", 1, 1, 20), seqKeys("s", "b", 1, 1, 20)...)
	requireExactlyOnce(t, effectsOf(t, c), want)
	require.NoError(t, c.View(context.Background(), func(tx *bolt.Tx) error {
		return tx.Bucket([]byte("order")).ForEach(func(_, v []byte) error {
			order = append(order, int64(beUint(v)))
			return nil
		})
	}))
	require.Equal(t, []int64{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20}, order)
	require.GreaterOrEqual(t, failures, 2)
}
