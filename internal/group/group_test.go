package group

import (
	"testing"

	"github.com/stretchr/testify/require"
)

func TestGather(t *testing.T) {
	for _, tc := range []struct {
		name      string
		queued    []int
		close     bool
		max       int // take returns false once it holds max
		want      []int
		wantOpen  bool
		leftQueue int
	}{
		{name: "empty", wantOpen: true},
		{name: "all waiting", queued: []int{1, 2, 3}, max: 10, want: []int{1, 2, 3}, wantOpen: true},
		{name: "full batch stops", queued: []int{1, 2, 3, 4}, max: 2, want: []int{1, 2}, wantOpen: true, leftQueue: 2},
		{name: "closed after the waiting ones", queued: []int{1, 2}, close: true, max: 10, want: []int{1, 2}},
		{name: "closed and empty", close: true, max: 10},
		{name: "full before the close is seen", queued: []int{1, 2}, close: true, max: 2, want: []int{1, 2}, wantOpen: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ch := make(chan int, 8)
			for _, v := range tc.queued {
				ch <- v
			}
			if tc.close {
				close(ch)
			}
			var got []int
			open := Gather(ch, func(v int) bool { got = append(got, v); return len(got) < tc.max })
			require.Equal(t, tc.want, got)
			require.Equal(t, tc.wantOpen, open)
			require.Len(t, ch, tc.leftQueue)
		})
	}
}

// Gather never blocks: with nothing waiting it returns at once.
func TestGatherDoesNotBlock(t *testing.T) {
	ch := make(chan int)
	require.True(t, Gather(ch, func(int) bool { t.Fatal("took a value"); return true }))
}
