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

func TestLabels(t *testing.T) {
	var m Memory
	a := With(&m, Label{"client", "a"})
	b := With(With(&m, Label{"client", "b"}), Label{"queue", "q"})
	a.Add("c_total", 2)
	b.Add("c_total", 3)
	b.Observe("lat_seconds", 1)
	require.Equal(t, 5.0, m.Get("c_total"))
	require.Equal(t, 2.0, m.GetWith("c_total", Label{"client", "a"}))
	require.Equal(t, 3.0, m.GetWith("c_total", Label{"queue", "q"}, Label{"client", "b"}))
	require.Equal(t, 1.0, m.Snapshot()[`lat_seconds_count{client="b",queue="q"}`])
	require.Equal(t, `n{a="1",b="2"}`, Key("n", Label{"b", "2"}, Label{"a", "1"}))
	release, err := Claim(b) // Memory is no Claimer: always granted
	require.NoError(t, err)
	release()
}

func TestMulti(t *testing.T) {
	var a, b Memory
	m := Multi(&a, nil, With(&b, Label{"client", "x"}))
	m.Add("c_total", 2)
	m.Observe("l_seconds", 1)
	require.Equal(t, 2.0, a.Get("c_total"))
	require.Equal(t, 2.0, b.GetWith("c_total", Label{"client", "x"}))
	release, err := Claim(m)
	require.NoError(t, err)
	release()
}
