package integration

import (
	"context"
	"reflect"
	"testing"
	"time"
)

func TestLineWriter(t *testing.T) {
	tests := []struct {
		name   string
		writes []string
		want   []string
	}{
		{"one line", []string{"a\n"}, []string{"a"}},
		{"several lines in one write", []string{"a\nb\nc\n"}, []string{"a", "b", "c"}},
		{"a line split across writes", []string{"acc", "epted a 1", " s 2\n"}, []string{"accepted a 1 s 2"}},
		{"empty lines kept", []string{"\n\n"}, []string{"", ""}},
		{"partial last line dropped and marked", []string{"a\nacce"}, []string{"a", "# partial line dropped: acce"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var got []string
			w := &lineWriter{fn: func(l string) { got = append(got, l) }}
			for _, s := range tt.writes {
				n, err := w.Write([]byte(s))
				if err != nil || n != len(s) {
					t.Fatalf("Write(%q) = %d, %v", s, n, err)
				}
			}
			w.flush()
			if !reflect.DeepEqual(got, tt.want) {
				t.Fatalf("got %q, want %q", got, tt.want)
			}
		})
	}
}

func TestParseStats(t *testing.T) {
	tests := []struct {
		line string
		want map[string]float64
		ok   bool
	}{
		{"stats handled=10 duplicates=2", map[string]float64{"handled": 10, "duplicates": 2}, true},
		{"stats resent=0", map[string]float64{"resent": 0}, true},
		{"stats resent", nil, false},
		{"stats resent=x", nil, false},
		{"gap a 1 s 1 2", nil, false},
		{"time=... msg=stats", nil, false},
	}
	for _, tt := range tests {
		got, ok := parseStats(tt.line)
		if ok != tt.ok || (ok && !reflect.DeepEqual(got, tt.want)) {
			t.Errorf("parseStats(%q) = %v, %v; want %v, %v", tt.line, got, ok, tt.want, tt.ok)
		}
	}
}

// TestProc: the runner captures stdout lines, reports exit status, SIGTERM and SIGKILL.
func TestProc(t *testing.T) {
	dir := t.TempDir()
	var lines []string
	p := startProc(t, dir, procSpec{name: "echo", bin: "/bin/sh", args: []string{"-c", "echo one; echo two; echo err >&2; exit 3"},
		onStdout: func(l string) { lines = append(lines, l) }})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := p.wait(ctx); err == nil {
		t.Fatal("exit 3 reported as success")
	}
	if !reflect.DeepEqual(lines, []string{"one", "two"}) || p.stderrTail() != "err" || p.wasKilled() {
		t.Fatalf("lines %q, stderr %q, killed %v", lines, p.stderrTail(), p.wasKilled())
	}

	p = startProc(t, dir, procSpec{name: "sleeper", bin: "/bin/sh", args: []string{"-c", "trap 'exit 0' TERM; while :; do sleep 0.05; done"}})
	time.Sleep(200 * time.Millisecond)
	if err := p.term(5 * time.Second); err != nil || p.wasKilled() {
		t.Fatalf("SIGTERM: %v (killed %v)", err, p.wasKilled())
	}

	p = startProc(t, dir, procSpec{name: "stubborn", bin: "/bin/sh", args: []string{"-c", "trap '' TERM; while :; do sleep 0.05; done"}})
	time.Sleep(200 * time.Millisecond)
	if err := p.term(300 * time.Millisecond); err == nil || !p.wasKilled() || !p.exited() {
		t.Fatalf("a process ignoring SIGTERM must be killed: %v (killed %v)", err, p.wasKilled())
	}
}
