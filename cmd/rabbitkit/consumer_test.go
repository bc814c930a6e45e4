package main

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/jackc/pgx/v5"

	"github.com/rabbitkit/rabbitkit/consumer"
	"github.com/rabbitkit/rabbitkit/consumer/dedup"
	"github.com/rabbitkit/rabbitkit/consumer/pginbox"
	"github.com/rabbitkit/rabbitkit/internal/pgtest"
	"github.com/rabbitkit/rabbitkit/journal"
	"github.com/rabbitkit/rabbitkit/protocol"
	bolt "go.etcd.io/bbolt"
)

// stamps the test stores record: stream a has epoch 6 (retired by epoch 7, MaxEpochs 1), then 1,2,5
// (gap 3-4); stream b 1..3, and 4 parked (testParked).
var testStamps = []protocol.Stamp{
	{Source: "orders-api", Epoch: 6, Stream: "a", Seq: 1},
	{Source: "orders-api", Epoch: 7, Stream: "a", Seq: 1}, {Source: "orders-api", Epoch: 7, Stream: "a", Seq: 2},
	{Source: "orders-api", Epoch: 7, Stream: "a", Seq: 5},
	{Source: "orders-api", Epoch: 7, Stream: "b", Seq: 1}, {Source: "orders-api", Epoch: 7, Stream: "b", Seq: 2},
	{Source: "orders-api", Epoch: 7, Stream: "b", Seq: 3},
}

// newStore makes a bbolt consumer store holding testStamps, through the store's Commit.
func newStore(t *testing.T) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "consumer.db")
	s, err := consumer.OpenBoltStore(path, consumer.BoltOptions{})
	require.NoError(t, err)
	tr, err := dedup.New(testDedup)
	require.NoError(t, err)
	now := time.Now()
	for _, st := range testStamps {
		tr.Commit(st, 0, now)
	}
	tr.CommitParked(testParked, 0, now)
	var states []consumer.StreamState
	for _, k := range tr.TakeDirty(nil) {
		b, ok := tr.AppendState(nil, k)
		require.True(t, ok)
		states = append(states, consumer.StreamState{Key: k, State: b})
	}
	require.NoError(t, s.Commit(context.Background(), &consumer.Batch[*bolt.Tx]{States: func([]bool) []consumer.StreamState { return states }}))
	require.NoError(t, s.Close())
	return path
}

var (
	testParked = protocol.Stamp{Source: "orders-api", Epoch: 7, Stream: "b", Seq: 4}
	testDedup  = dedup.Config{MaxEpochs: 1}
)

func checkState(t *testing.T, out string) {
	t.Helper()
	var st stateOut
	require.NoError(t, json.Unmarshal([]byte(out), &st))
	require.Equal(t, 2, st.Totals.Streams)
	require.Equal(t, 1, st.Totals.Gaps)
	require.Equal(t, int64(2), st.Totals.Missing)
	require.Len(t, st.Windows, 2)
	a := st.Windows[0]
	require.Equal(t, "orders-api", a.Source)
	require.Equal(t, "a", a.Stream)
	require.Equal(t, int64(7), a.Epoch)
	require.Equal(t, int64(2), a.Watermark)
	require.Equal(t, int64(5), a.Highest)
	require.Len(t, a.Gaps, 1)
	require.Equal(t, rangeOut{Lo: 3, Hi: 4, Since: a.Gaps[0].Since}, a.Gaps[0])
	require.WithinDuration(t, time.Now(), a.Gaps[0].Since, time.Minute)
	b := st.Windows[1]
	require.Equal(t, int64(4), b.Watermark, "a parked stamp is accounted for")
	require.Equal(t, []retiredOut{{Source: "orders-api", Stream: "a", Epoch: 6, RetiredAt: st.Retired[0].RetiredAt}}, st.Retired)
	require.Equal(t, []parkedStampOut{{Source: "orders-api", Stream: "b", Epoch: 7, Seq: 4, ParkedAt: st.Parked[0].ParkedAt}}, st.Parked)
	require.Equal(t, 1, st.Totals.Retired)
	require.Equal(t, 1, st.Totals.Parked)
}

func TestConsumerStateBolt(t *testing.T) {
	path := newStore(t)
	code, out, stderr := cli(t, "consumer", "state", path)
	require.Equal(t, 0, code, stderr)
	golden(t, "consumer_state", out)
	code, out, stderr = cli(t, "consumer", "-json", "state", path)
	require.Equal(t, 0, code, stderr)
	checkState(t, out)

	// Locked by a running consumer.
	s, err := consumer.OpenBoltStore(path, consumer.BoltOptions{})
	require.NoError(t, err)
	code, _, stderr = cli(t, "consumer", "state", path)
	require.NoError(t, s.Close())
	require.Equal(t, 1, code)
	require.Contains(t, stderr, "locked")
	require.Contains(t, stderr, "metrics endpoint")

	// A journal is not a store; a text file neither; a damaged store is corrupt.
	jpath := filepath.Join(t.TempDir(), "outbox.db")
	j, err := journal.Open(jpath, journal.Options{Source: "x"})
	require.NoError(t, err)
	require.NoError(t, j.Close())
	code, _, stderr = cli(t, "consumer", "state", jpath)
	require.Equal(t, 1, code)
	require.Contains(t, stderr, "not a consumer store")
	txt := filepath.Join(t.TempDir(), "notes.db")
	require.NoError(t, os.WriteFile(txt, []byte("just some text, not bbolt at all, long enough to have a header......"), 0o600))
	code, _, stderr = cli(t, "consumer", "state", txt)
	require.Equal(t, 1, code)
	require.NotEmpty(t, stderr)
	b, err := os.ReadFile(path)
	require.NoError(t, err)
	for i := 0; i < 8192 && i < len(b); i++ {
		b[i] ^= 0xa5
	}
	bad := filepath.Join(t.TempDir(), "consumer.db")
	require.NoError(t, os.WriteFile(bad, b, 0o600))
	code, _, stderr = cli(t, "consumer", "state", bad)
	require.Equal(t, 1, code)
	require.Contains(t, stderr, "corrupt")

	// Usage.
	code, _, _ = cli(t, "consumer", "state")
	require.Equal(t, 2, code)
	code, _, _ = cli(t, "consumer", "dump", path)
	require.Equal(t, 2, code)
}

func TestConsumerStatePG(t *testing.T) {
	dsn := pgtest.DSN(t)
	ctx := context.Background()
	pool := pgtest.PoolOn(t, dsn, 4)
	s, err := pginbox.Open(ctx, pool, pginbox.Options{Dedup: testDedup})
	require.NoError(t, err)
	b := &consumer.Batch[pgx.Tx]{}
	for _, st := range testStamps {
		b.Ops = append(b.Ops, consumer.Op[pgx.Tx]{Key: dedup.KeyOf(st), Stamp: st, Mark: true})
	}
	b.Ops = append(b.Ops, consumer.Op[pgx.Tx]{Key: dedup.KeyOf(testParked), Stamp: testParked, Mark: true, Park: true})
	require.NoError(t, s.Commit(ctx, b))
	require.NoError(t, s.Close())

	secret := withPassword(t, dsn)
	code, out, stderr := cli(t, "consumer", "state", "-pg", secret)
	require.Equal(t, 0, code, stderr)
	golden(t, "consumer_state_pg", out)
	code, out, stderr = cli(t, "consumer", "state", "-pg", secret, "-json")
	require.Equal(t, 0, code, stderr)
	checkState(t, out)

	code, _, stderr = cli(t, "consumer", "state", "-pg", secret, "-table", "no_such_table")
	require.Equal(t, 1, code)
	require.Contains(t, stderr, "no_such_table")
	code, _, stderr = cli(t, "consumer", "state", "-pg", "postgres://postgres:"+testPassword+"@127.0.0.1:1/x?connect_timeout=2")
	require.Equal(t, 1, code)
	require.Contains(t, stderr, "xxxxx")
}
