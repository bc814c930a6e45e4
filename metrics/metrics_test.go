package metrics

import (
	"sync"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestMemory(t *testing.T) {
	var m Memory
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for range 1000 {
				m.Add("c", 1)
				m.Observe("lat", 0.5)
			}
		})
	}
	wg.Wait()
	m.Set("g", 3)
	require.Equal(t, 8000.0, m.Get("c"))
	require.Equal(t, 3.0, m.Get("g"))
	require.Equal(t, 8000.0, m.Get("lat_count"))
	require.Equal(t, 4000.0, m.Snapshot()["lat_sum"])
	var r Recorder = OrNop(nil)
	r.Add("x", 1)
}
