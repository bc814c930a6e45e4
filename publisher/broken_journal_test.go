package publisher

import (
	"context"
	"os"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/rabbitkit/rabbitkit/journal"
)

// When the disk fails a journal commit, the message may or may not be on disk: Publish must say
// "unknown" (ErrAcceptUnknown), never a plain failure that invites the caller to publish again.
func TestPublishReportsBrokenJournalAsAcceptUnknown(t *testing.T) {
	path := filepath.Join(t.TempDir(), "j.db")
	j, err := journal.Open(path, journal.Options{Source: "broken"})
	require.NoError(t, err)
	p, err := New(Config{URLs: []string{"amqp://guest:guest@127.0.0.1:1/"}, Source: "broken", Journal: j})
	require.NoError(t, err)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err = p.Publish(ctx, Message{Exchange: "x", RoutingKey: "k", Body: []byte("kept")})
	require.NoError(t, err, "the broker is down; Publish still accepts")

	// Swap the journal's descriptor for a read-only one: the next commit fails with an I/O error.
	fd := -1
	ents, err := os.ReadDir("/proc/self/fd")
	require.NoError(t, err)
	for _, de := range ents {
		if target, _ := os.Readlink("/proc/self/fd/" + de.Name()); target == path {
			fd, _ = strconv.Atoi(de.Name())
		}
	}
	require.NotEqual(t, -1, fd)
	ro, err := os.Open(path)
	require.NoError(t, err)
	require.NoError(t, syscall.Dup2(int(ro.Fd()), fd))
	require.NoError(t, ro.Close())

	_, err = p.Publish(ctx, Message{Exchange: "x", RoutingKey: "k", Body: []byte("lost or not")})
	require.ErrorIs(t, err, ErrAcceptUnknown)
	require.ErrorIs(t, err, journal.ErrBroken)

	closeCtx, cancelClose := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancelClose()
	_ = p.Close(closeCtx)
	_ = j.Close() // the descriptor is not the journal's any more: errors are expected
}
