package consumer

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	bolt "go.etcd.io/bbolt"

	"github.com/rabbitkit/rabbitkit/consumer/dedup"
)

func openTestStore(t *testing.T) (*BoltStore, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "store.db")
	s, err := OpenBoltStore(path, BoltOptions{})
	require.NoError(t, err)
	t.Cleanup(func() { _ = s.Close() })
	return s, path
}

type (
	boltBatch = Batch[*bolt.Tx]
	boltOp    = Op[*bolt.Tx]
)

func put(key string) func(*bolt.Tx) error {
	return func(tx *bolt.Tx) error {
		b, err := tx.CreateBucketIfNotExists([]byte("fx"))
		if err != nil {
			return err
		}
		return b.Put([]byte(key), []byte("1"))
	}
}

func keysIn(t *testing.T, s *BoltStore) []string {
	t.Helper()
	var out []string
	require.NoError(t, s.DB().View(func(tx *bolt.Tx) error {
		b := tx.Bucket([]byte("fx"))
		if b == nil {
			return nil
		}
		return b.ForEach(func(k, _ []byte) error { out = append(out, string(k)); return nil })
	}))
	return out
}

func TestBoltStoreFailedEffectIsRolledBackAlone(t *testing.T) {
	s, _ := openTestStore(t)
	a, b := dedup.Key{Source: "s", Stream: "a"}, dedup.Key{Source: "s", Stream: "b"}
	boom := errors.New("boom")
	calls := 0
	var applied []bool
	batch := &boltBatch{
		Ops: []boltOp{
			{Key: a, Effect: put("a1")},
			{Key: a, Effect: func(*bolt.Tx) error { return boom }},
			{Key: a, Effect: put("a3")}, // after the failure in its stream: skipped
			{Key: b, Effect: put("b1")},
			{Key: b, Effect: func(*bolt.Tx) error { panic("kaput") }},
			{Key: b}, // mark-only op after the panic: skipped too
		},
		States: func(ap []bool) []StreamState {
			calls++
			applied = append([]bool(nil), ap...)
			return []StreamState{{Key: a, State: []byte("state-a")}}
		},
	}
	require.NoError(t, s.Commit(context.Background(), batch))
	require.Equal(t, 1, calls, "States runs once, for the committed attempt")
	require.Equal(t, []bool{true, false, false, true, false, false}, applied)
	require.ErrorIs(t, batch.Ops[1].Err, boom)
	require.ErrorIs(t, batch.Ops[2].Err, ErrSkipped)
	require.ErrorIs(t, batch.Ops[4].Err, ErrPanic)
	require.ErrorIs(t, batch.Ops[5].Err, ErrSkipped)
	require.ElementsMatch(t, []string{"a1", "b1"}, keysIn(t, s))
	states, err := s.Load(context.Background())
	require.NoError(t, err)
	require.Equal(t, []StreamState{{Key: a, State: []byte("state-a")}}, states)

	// nil State deletes.
	require.NoError(t, s.Commit(context.Background(), &boltBatch{States: func([]bool) []StreamState { return []StreamState{{Key: a}} }}))
	states, err = s.Load(context.Background())
	require.NoError(t, err)
	require.Empty(t, states)
}

func TestBoltStoreGroupsConcurrentCommits(t *testing.T) {
	s, path := openTestStore(t)
	var wg sync.WaitGroup
	errs := make(chan error, 50)
	for i := range 50 {
		wg.Go(func() {
			k := dedup.Key{Source: "s", Stream: fmt.Sprint(i)}
			errs <- s.Commit(context.Background(), &boltBatch{
				Ops:    []boltOp{{Key: k, Effect: put(fmt.Sprint(i))}},
				States: func([]bool) []StreamState { return []StreamState{{Key: k, State: []byte{byte(i)}}} },
			})
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		require.NoError(t, err)
	}
	require.Len(t, keysIn(t, s), 50)
	require.NoError(t, s.Close())
	require.NoError(t, s.Close(), "Close is idempotent")
	require.ErrorIs(t, s.Commit(context.Background(), &boltBatch{}), ErrClosed)

	s2, err := OpenBoltStore(path, BoltOptions{})
	require.NoError(t, err)
	defer s2.Close()
	states, err := s2.Load(context.Background())
	require.NoError(t, err)
	require.Len(t, states, 50, "durable across reopen")

	_, err = OpenBoltStore(path, BoltOptions{LockTimeout: 100 * time.Millisecond})
	require.ErrorIs(t, err, ErrLocked)
}

func TestAckWindow(t *testing.T) {
	tests := []struct {
		name     string
		received uint64
		finish   []uint64
		want     uint64
		ok       bool
	}{
		{"nothing finished", 5, nil, 0, false},
		{"prefix", 5, []uint64{1, 2, 3}, 3, true},
		{"hole blocks", 5, []uint64{1, 3, 4}, 1, true},
		{"out of order", 5, []uint64{4, 2, 1, 3, 5}, 5, true},
		{"first missing", 5, []uint64{2, 3}, 0, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a := newAckWindow()
			for tag := uint64(1); tag <= tt.received; tag++ {
				a.receive(tag)
			}
			for _, tag := range tt.finish {
				a.finish(tag)
			}
			got, ok := a.advance()
			require.Equal(t, tt.ok, ok)
			require.Equal(t, tt.want, got)
			require.Equal(t, tt.received-tt.want, a.outstanding())
			_, again := a.advance()
			require.False(t, again, "nothing new to ack")
		})
	}
}

func TestConfigValidation(t *testing.T) {
	ok := Config{URLs: []string{"amqp://x"}, Queue: "q", StorePath: "x"}
	tests := []struct {
		name   string
		mutate func(*Config)
	}{
		{"no urls", func(c *Config) { c.URLs = nil }},
		{"no queue", func(c *Config) { c.Queue = "" }},
		{"negative prefetch", func(c *Config) { c.Prefetch = -1 }},
		{"prefetch above the AMQP limit", func(c *Config) { c.Prefetch = 65536 }},
		{"parking is the queue", func(c *Config) { c.ParkingQueue = "q" }},
		{"bad policy", func(c *Config) { c.NoStamp = 9 }},
		{"bad dedup", func(c *Config) { c.Dedup.MaxSeen = -1 }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := ok
			tt.mutate(&c)
			_, err := c.withDefaults()
			require.ErrorIs(t, err, ErrInvalidConfig)
		})
	}
	_, err := New(Config{URLs: ok.URLs, Queue: ok.Queue})
	require.ErrorIs(t, err, ErrInvalidConfig, "New without StorePath")
	_, err = NewWithStore[*bolt.Tx](ok, nil)
	require.ErrorIs(t, err, ErrInvalidConfig, "NewWithStore without a store")
	c, err := ok.withDefaults()
	require.NoError(t, err)
	require.Equal(t, "q.parked", c.ParkingQueue)
	require.Equal(t, DefaultPrefetch, c.Prefetch)
	require.Equal(t, 1, c.Workers)
}
