package publisher

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/rabbitkit/rabbitkit/internal/testbroker"
	"github.com/rabbitkit/rabbitkit/internal/testutil"
	"github.com/rabbitkit/rabbitkit/protocol"
)

// childEnv makes the test binary act as a publisher process (TestMain): it publishes forever and
// prints "stream epoch seq" for every accepted message, until it is killed.
const childEnv = "RABBITKIT_PUBLISHER_CHILD"

func childMain() int {
	cfg := Config{
		URLs:             []string{os.Getenv("RABBITKIT_CHILD_URL")},
		Source:           os.Getenv("RABBITKIT_CHILD_SOURCE"),
		JournalPath:      os.Getenv("RABBITKIT_CHILD_JOURNAL"),
		Heartbeat:        time.Second,
		ReconnectBackoff: testutil.FastBackoff,
		RetryBackoff:     testutil.FastBackoff,
	}
	p, err := New(cfg)
	if err != nil {
		fmt.Fprintln(os.Stderr, "child:", err)
		return 2
	}
	w := bufio.NewWriter(os.Stdout)
	ctx := context.Background()
	for i := 0; ; i++ {
		r, err := p.Publish(ctx, Message{Exchange: os.Getenv("RABBITKIT_CHILD_EXCHANGE"), RoutingKey: os.Getenv("RABBITKIT_CHILD_KEY"), Body: fmt.Appendf(nil, "c%d", i)})
		if err != nil {
			fmt.Fprintln(os.Stderr, "child:", err)
			return 3
		}
		st := r.Stamp()
		fmt.Fprintf(w, "%s %d %d\n", st.Stream, st.Epoch, st.Seq)
		if i%16 == 0 {
			_ = w.Flush()
		}
		if i%64 == 0 {
			time.Sleep(time.Millisecond)
		}
	}
}

// TestProcessKilled: a publisher process is SIGKILLed mid-stream; a new Publisher on the same journal
// resends what was left, continues the sequence (never reusing a number), and every message the
// killed process accepted arrives.
func TestProcessKilled(t *testing.T) {
	url := testbroker.SharedURL(t)
	s := newSetup(t, url, "classic", nil)
	dir := t.TempDir()
	cfg := s.config(t, url, dir)
	declare(t, url, s) // the child declares nothing

	l := newLedger()
	var maxSeq int64
	for round := range 2 {
		cmd := exec.Command(os.Args[0], "-test.run=^$")
		cmd.Env = append(os.Environ(), childEnv+"=1", "RABBITKIT_CHILD_URL="+url, "RABBITKIT_CHILD_SOURCE="+cfg.Source,
			"RABBITKIT_CHILD_JOURNAL="+filepath.Join(dir, "journal.db"), "RABBITKIT_CHILD_EXCHANGE="+s.exchange, "RABBITKIT_CHILD_KEY="+s.key)
		cmd.Stderr = os.Stderr
		out, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		sc := bufio.NewScanner(out)
		got := 0
		first := int64(0)
		for sc.Scan() && got < 800 {
			f := strings.Fields(sc.Text())
			if len(f) != 3 {
				continue
			}
			ep, _ := strconv.ParseInt(f[1], 10, 64)
			seq, _ := strconv.ParseInt(f[2], 10, 64)
			if first == 0 {
				first = seq
			}
			l.add(protocol.Stamp{Source: cfg.Source, Epoch: ep, Stream: f[0], Seq: seq})
			got++
		}
		if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		_ = cmd.Wait()
		if got < 800 {
			t.Fatalf("round %d: child printed only %d accepted messages", round, got)
		}
		if first <= maxSeq {
			t.Fatalf("round %d: sequence restarted at %d after %d had been accepted: reused", round, first, maxSeq)
		}
		l.mu.Lock()
		for _, seqs := range l.accepted {
			maxSeq = max(maxSeq, seqs[len(seqs)-1])
		}
		l.mu.Unlock()
		t.Logf("round %d: killed after %d accepted (seq %d..%d)", round, got, first, maxSeq)
	}
	// A publisher on the same journal sends what the killed processes left.
	p := mustNew(t, cfg)
	r, err := p.Publish(context.Background(), Message{Exchange: s.exchange, RoutingKey: s.key, Body: []byte("after")})
	if err != nil {
		t.Fatal(err)
	}
	if r.Stamp().Seq <= maxSeq {
		t.Fatalf("seq %d after restart, want > %d", r.Stamp().Seq, maxSeq)
	}
	l.add(r.Stamp())
	flush(t, p, 60*time.Second)
	// Messages journaled but not yet printed when the child died arrive too: they are not in the
	// ledger, so they are allowed as extras.
	check(t, url, s.queue, l, checkOpts{allowExtra: true})
}
