package publisher

import (
	"context"
	"errors"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/rabbitkit/rabbitkit/journal"
	"github.com/rabbitkit/rabbitkit/topology"
)

func TestNewRelayRefusals(t *testing.T) {
	j, err := journal.Open(filepath.Join(t.TempDir(), "ob.db"), journal.Options{Source: "relay-src"})
	if err != nil {
		t.Fatal(err)
	}
	defer j.Close()
	url := []string{"amqp://guest:guest@127.0.0.1:5672/"}
	for _, tc := range []struct {
		name string
		cfg  Config
		ob   Outbox
		want string // in the error
	}{
		{"nil outbox", Config{URLs: url}, nil, "nil Outbox"},
		{"no URLs", Config{}, j, "no URLs"},
		{"bad URL", Config{URLs: []string{"http://x/"}}, j, ""},
		{"Journal set", Config{URLs: url, Journal: j}, j, "Journal and JournalPath must be unset"},
		{"JournalPath set", Config{URLs: url, JournalPath: "x.db"}, j, "Journal and JournalPath must be unset"},
		{"Source mismatch", Config{URLs: url, Source: "other"}, j, `does not match the outbox's "relay-src"`},
		{"negative limit", Config{URLs: url, MaxInFlight: -1}, j, "negative limit"},
		{"window too large", Config{URLs: url, MaxInFlight: 65536}, j, "above 65535"},
		{"bad topology", Config{URLs: url, Topology: topology.Topology{Queues: []topology.Queue{{}}}}, j, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r, err := NewRelay(tc.cfg, tc.ob)
			if r != nil {
				_ = r.Close(context.Background())
				t.Fatal("NewRelay accepted an invalid config")
			}
			if !errors.Is(err, ErrInvalidConfig) {
				t.Fatalf("err %v, want ErrInvalidConfig", err)
			}
			if tc.want != "" && !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err %q, want it to say %q", err, tc.want)
			}
		})
	}
}

// A valid config: Source defaults to the outbox's, the defaults apply, and Close joins it.
func TestNewRelayDefaults(t *testing.T) {
	j, err := journal.Open(filepath.Join(t.TempDir(), "ob.db"), journal.Options{Source: "relay-src"})
	if err != nil {
		t.Fatal(err)
	}
	defer j.Close()
	f := newFakeConnector()
	r, err := NewRelay(Config{dial: f, Logger: testLogger(t), JournalOptions: journal.Options{Source: "ignored"}}, j)
	if err != nil {
		t.Fatal(err)
	}
	if r.p.cfg.Source != "relay-src" || r.p.cfg.MaxInFlight != DefaultMaxInFlight || r.p.cfg.MaxBuffered != 1 {
		t.Errorf("config after NewRelay: source %q, window %d, buffered %d", r.p.cfg.Source, r.p.cfg.MaxInFlight, r.p.cfg.MaxBuffered)
	}
	nextChan(t, nextConn(t, f))
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := r.WaitReady(ctx); err != nil {
		t.Fatal(err)
	}
	if err := r.Close(ctx); err != nil {
		t.Fatal(err)
	}
}
