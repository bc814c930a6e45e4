package journal

import (
	"context"
	"flag"
	"fmt"
	"path/filepath"
	"runtime"
	"testing"

	"github.com/stretchr/testify/require"
)

var memoryEntries = flag.Int("journal.memory-entries", envInt("RABBITKIT_JOURNAL_MEMORY_ENTRIES", 200_000),
	"pending entries in TestReadMemory; 1000000 for the full check (env RABBITKIT_JOURNAL_MEMORY_ENTRIES)")

// TestReadMemory journals many entries and reads them all page by page,
// checking that the live heap stays far below the size of the data: Read
// never holds more than one page.
func TestReadMemory(t *testing.T) {
	if testing.Short() {
		t.Skip("writes a large journal")
	}
	n := *memoryEntries
	ctx := context.Background()
	j := openT(t, filepath.Join(t.TempDir(), "mem.db"), Options{MaxBytes: 8 << 30, MaxEntries: 1 << 30})
	batch := make([]*Entry, 1000)
	body := make([]byte, 100)
	for i := 0; i < n; i += len(batch) {
		for k := range batch {
			batch[k] = &Entry{Stream: fmt.Sprint("s", k%10), Exchange: "ex", RoutingKey: "rk", Body: body}
		}
		require.NoError(t, j.AppendBatch(ctx, batch))
	}
	st := j.Stats()
	require.Equal(t, n, st.Pending)

	heap := func() uint64 {
		runtime.GC()
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		return ms.HeapAlloc
	}
	base := heap()
	peak := base
	var ms0 runtime.MemStats
	runtime.ReadMemStats(&ms0)
	var after uint64
	read, pages := 0, 0
	for {
		es, err := j.Read(ctx, after, 1000)
		require.NoError(t, err)
		if len(es) == 0 {
			break
		}
		read += len(es)
		after = es[len(es)-1].ID
		if pages++; pages%25 == 0 {
			peak = max(peak, heap())
		}
	}
	peak = max(peak, heap())
	require.Equal(t, n, read)
	var ms1 runtime.MemStats
	runtime.ReadMemStats(&ms1)
	perRead := (ms1.TotalAlloc - ms0.TotalAlloc) / uint64(pages)
	grew := int64(peak) - int64(base)
	t.Logf("%d entries, %d MiB encoded in %d MiB file; heap before reading %d MiB, peak live while reading %d MiB (+%d KiB); %d KiB allocated per Read of 1000",
		n, st.PendingBytes>>20, st.FileSize>>20, base>>20, peak>>20, grew>>10, perRead>>10)
	// One page of 1000 decoded entries is ~0.3 MiB; everything would be
	// hundreds of bytes per entry.
	require.Less(t, grew, int64(16<<20), "reading held entries in memory")
	require.Less(t, grew, st.PendingBytes/4)
	// Each Read touches only its page: allocation per call is bounded by the
	// page, not by the journal.
	require.Less(t, perRead, uint64(4<<20))
}
