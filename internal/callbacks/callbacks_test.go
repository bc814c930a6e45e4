package callbacks

import (
	"io"
	"log/slog"
	"testing"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// Callbacks run in order, a panicking one does not stop the rest, Close runs what was pushed
// before it and stops the goroutine.
func TestLoop(t *testing.T) {
	l := Start(slog.New(slog.NewTextHandler(io.Discard, nil)), "test")
	var got []int
	for i := range 100 {
		if i == 50 {
			l.Push(func() { panic("boom") })
		}
		l.Push(func() { got = append(got, i) })
	}
	l.Close()
	l.Close() // idempotent
	if len(got) != 100 {
		t.Fatalf("%d callbacks ran, want 100", len(got))
	}
	for i, v := range got {
		if v != i {
			t.Fatalf("callback %d ran at position %d", v, i)
		}
	}
}
