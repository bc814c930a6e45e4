package main

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/rabbitkit/rabbitkit/consumer"
)

// -dump on a corrupt store file returns the error (main exits with it), never panics or faults.
func TestDumpCorruptStore(t *testing.T) {
	path := filepath.Join(t.TempDir(), "store.db")
	s, err := consumer.OpenBoltStore(path, consumer.BoltOptions{NoSync: true})
	require.NoError(t, err)
	require.NoError(t, s.Close())
	var out bytes.Buffer
	require.NoError(t, dump(&out, path))

	b, err := os.ReadFile(path)
	require.NoError(t, err)
	for name, mutate := range map[string]func([]byte) []byte{
		"truncated":   func(b []byte) []byte { return b[:len(b)/3] },
		"meta zeroed": func(b []byte) []byte { clear(b[:8192]); return b },
	} {
		t.Run(name, func(t *testing.T) {
			p := filepath.Join(t.TempDir(), "store.db")
			require.NoError(t, os.WriteFile(p, mutate(append([]byte(nil), b...)), 0o600))
			err := dump(&out, p)
			require.ErrorIs(t, err, consumer.ErrCorrupt)
			require.Contains(t, err.Error(), p)
		})
	}
}
