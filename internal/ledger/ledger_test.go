package ledger

import (
	"errors"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"
	bolt "go.etcd.io/bbolt"

	"github.com/rabbitkit/rabbitkit/protocol"
)

func TestLedger(t *testing.T) {
	db, err := bolt.Open(filepath.Join(t.TempDir(), "l.db"), 0o600, nil)
	require.NoError(t, err)
	defer db.Close()

	a := protocol.Stamp{Source: "a", Epoch: 1, Stream: "s", Seq: 1}
	b := protocol.Stamp{Source: "a", Epoch: 1, Stream: "s", Seq: 2}
	require.NoError(t, db.Update(func(tx *bolt.Tx) error {
		_, err := Increment(tx, a)
		return err
	}))
	// A rolled back transaction leaves no trace: the effect commits only with its transaction.
	boom := errors.New("boom")
	err = db.Update(func(tx *bolt.Tx) error {
		n, err := Increment(tx, b)
		require.NoError(t, err)
		require.EqualValues(t, 1, n)
		return boom
	})
	require.ErrorIs(t, err, boom)
	require.NoError(t, db.Update(func(tx *bolt.Tx) error {
		n, err := Increment(tx, a)
		require.EqualValues(t, 2, n)
		return err
	}))

	require.NoError(t, db.View(func(tx *bolt.Tx) error {
		n, err := Read(tx, a)
		require.NoError(t, err)
		require.EqualValues(t, 2, n)
		n, err = Read(tx, b)
		require.NoError(t, err)
		require.EqualValues(t, 0, n)
		return nil
	}))

	var got []protocol.Stamp
	require.NoError(t, db.View(func(tx *bolt.Tx) error {
		return Dump(tx, func(s protocol.Stamp, c int64) error {
			got = append(got, s)
			require.EqualValues(t, 2, c)
			return nil
		})
	}))
	require.Equal(t, []protocol.Stamp{a}, got)
}

func FuzzKey(f *testing.F) {
	f.Add("src", int64(1), "ex/key", int64(7))
	f.Add("", int64(-1), "", int64(0))
	f.Fuzz(func(t *testing.T, src string, epoch int64, stream string, seq int64) {
		s := protocol.Stamp{Source: src, Epoch: epoch, Stream: stream, Seq: seq}
		got, err := ParseKey(Key(s))
		require.NoError(t, err)
		require.Equal(t, s, got)
		// Truncated or extended keys never decode.
		k := Key(s)
		_, err = ParseKey(k[:len(k)-1])
		require.ErrorIs(t, err, ErrCorrupt)
		_, err = ParseKey(append(k, 0))
		require.ErrorIs(t, err, ErrCorrupt)
	})
}
