package amqpconn

import (
	"bytes"
	"errors"
	"io"
	"net"
	"sync"
	"testing"

	"github.com/stretchr/testify/require"
)

// recConn records the Write calls made to it.
type recConn struct {
	net.Conn
	mu     sync.Mutex
	writes [][]byte
	fail   error
	closed bool
}

func (r *recConn) Write(p []byte) (int, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.fail != nil {
		return 0, r.fail
	}
	r.writes = append(r.writes, bytes.Clone(p))
	return len(p), nil
}

func (r *recConn) Close() error {
	r.mu.Lock()
	r.closed = true
	r.mu.Unlock()
	return nil
}

func (r *recConn) joined() []byte {
	r.mu.Lock()
	defer r.mu.Unlock()
	return bytes.Join(r.writes, nil)
}

func TestBatchConn(t *testing.T) {
	tests := []struct {
		name       string
		limit      int
		hold       bool
		writes     []string
		wantWrites int // system writes before Release
		wantAfter  int // after Release
	}{
		{name: "not holding writes through", limit: 10, writes: []string{"ab", "cd"}, wantWrites: 2, wantAfter: 2},
		{name: "holding copies", limit: 10, hold: true, writes: []string{"ab", "cd", "ef"}, wantWrites: 0, wantAfter: 1},
		{name: "exactly the limit is held", limit: 4, hold: true, writes: []string{"ab", "cd"}, wantWrites: 0, wantAfter: 1},
		// held bytes, then the new ones: one writev on a socket, two Writes on this recorder
		{name: "past the limit writes all held plus the new bytes", limit: 4, hold: true, writes: []string{"ab", "cd", "e"}, wantWrites: 2, wantAfter: 2},
		{name: "one write larger than the limit", limit: 4, hold: true, writes: []string{"abcdef"}, wantWrites: 1, wantAfter: 1},
		{name: "release with nothing held writes nothing", limit: 4, hold: true, wantWrites: 0, wantAfter: 0},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			rc := &recConn{}
			b := &BatchConn{Conn: rc, Limit: tc.limit}
			if tc.hold {
				b.Hold()
			}
			var want []byte
			for _, w := range tc.writes {
				n, err := b.Write([]byte(w))
				require.NoError(t, err)
				require.Equal(t, len(w), n)
				want = append(want, w...)
			}
			require.Len(t, rc.writes, tc.wantWrites)
			require.NoError(t, b.Release())
			require.Len(t, rc.writes, tc.wantAfter)
			require.Equal(t, want, append([]byte(nil), rc.joined()...), "bytes in order, none lost")
		})
	}
}

func TestBatchConnErrorIsSticky(t *testing.T) {
	boom := errors.New("boom")
	rc := &recConn{fail: boom}
	b := NewBatchConn(rc)
	b.Hold()
	_, err := b.Write([]byte("held"))
	require.NoError(t, err, "held: nothing written yet")
	require.ErrorIs(t, b.Release(), boom)
	require.True(t, rc.closed, "the socket is closed so that the reader notices")
	rc.fail = nil
	_, err = b.Write([]byte("x"))
	require.ErrorIs(t, err, boom, "later writes fail too")
	require.ErrorIs(t, b.Release(), boom)
	require.Empty(t, rc.writes)
}

// Concurrent writers (the holder and, say, a heartbeat) never interleave inside one Write, and the
// peer receives every byte.
func TestBatchConnConcurrent(t *testing.T) {
	client, server := net.Pipe()
	b := &BatchConn{Conn: client, Limit: 64}
	got := make(chan []byte)
	go func() {
		all, _ := io.ReadAll(server)
		got <- all
	}()
	var wg sync.WaitGroup
	for g := range 4 {
		wg.Go(func() {
			for i := range 200 {
				if i%10 == 0 {
					b.Hold()
				}
				_, err := b.Write(bytes.Repeat([]byte{byte('a' + g)}, 7))
				if err != nil {
					t.Error(err)
					return
				}
				if i%10 == 9 {
					if err := b.Release(); err != nil {
						t.Error(err)
						return
					}
				}
			}
		})
	}
	wg.Wait()
	require.NoError(t, b.Release())
	require.NoError(t, client.Close())
	all := <-got
	require.Len(t, all, 4*200*7)
	for i := 0; i < len(all); i += 7 {
		require.Equal(t, bytes.Repeat(all[i:i+1], 7), all[i:i+7], "a Write arrives whole")
	}
}
