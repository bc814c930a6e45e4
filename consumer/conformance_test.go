package consumer_test

import (
	"encoding/binary"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"
	bolt "go.etcd.io/bbolt"

	"github.com/rabbitkit/rabbitkit/consumer"
	"github.com/rabbitkit/rabbitkit/consumer/storetest"
)

// BoltStore keeps the Store contract: the conformance suite every backend runs.
func TestBoltStoreConformance(t *testing.T) {
	storetest.Run(t, storetest.Harness[*bolt.Tx]{
		Fresh: func(t *testing.T) func(t *testing.T) consumer.Store[*bolt.Tx] {
			path := filepath.Join(t.TempDir(), "store.db")
			return func(t *testing.T) consumer.Store[*bolt.Tx] {
				s, err := consumer.OpenBoltStore(path, consumer.BoltOptions{})
				require.NoError(t, err)
				return s
			}
		},
		Incr: incrEffect,
		Count: func(tx *bolt.Tx, key string) (int64, error) {
			b := tx.Bucket(effectsBucket)
			if b == nil {
				return 0, nil
			}
			v := b.Get([]byte(key))
			if v == nil {
				return 0, nil
			}
			return int64(binary.BigEndian.Uint64(v)), nil
		},
	})
}
