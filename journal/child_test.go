package journal

import (
	"bufio"
	"context"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

var crashIterations = flag.Int("journal.crash-iterations", envInt("RABBITKIT_JOURNAL_CRASH_ITERATIONS", 30),
	"SIGKILL rounds in TestCrashSafety (env RABBITKIT_JOURNAL_CRASH_ITERATIONS)")

// envInt reads an integer test knob from the environment, so soaks can be
// turned up without passing package-specific flags to go test ./...
func envInt(name string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(name)); err == nil && v > 0 {
		return v
	}
	return def
}

const (
	envCrashChild = "RABBITKIT_JOURNAL_CRASH_CHILD"
	envLockChild  = "RABBITKIT_JOURNAL_LOCK_CHILD"
)

// runCrashChild is the child side of TestCrashSafety: it appends, deletes
// and compacts in a loop until it is killed, printing one line per operation
// the journal acknowledged:
//
//	A <id> <stream> <seq> <body>   append returned nil
//	X <id> <stream> <seq>          about to delete (the delete may or may not happen)
func runCrashChild() bool {
	path := os.Getenv(envCrashChild)
	if path == "" {
		return false
	}
	j, err := Open(path, withTestFold(Options{Source: "crash"}))
	if err != nil {
		fmt.Fprintln(os.Stderr, "child open:", err)
		os.Exit(3)
	}
	var outMu sync.Mutex
	emit := func(line string) {
		outMu.Lock()
		defer outMu.Unlock()
		if _, err := os.Stdout.WriteString(line); err != nil {
			os.Exit(4)
		}
	}
	ctx := context.Background()
	acked := make(chan *Entry, 4096)
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			for i := 0; ; i++ {
				var es []*Entry
				for k := range 1 + (i%5)*(g%2)*3 { // some goroutines append batches
					es = append(es, &Entry{Stream: fmt.Sprint("s", (g+k)%3), Body: []byte(fmt.Sprintf("g%d-i%d-k%d-%d", g, i, k, rand.Uint64()))})
				}
				var err error
				if len(es) == 1 {
					err = j.Append(ctx, es[0])
				} else {
					err = j.AppendBatch(ctx, es)
				}
				if err != nil {
					fmt.Fprintln(os.Stderr, "child append:", err)
					os.Exit(5)
				}
				var b strings.Builder
				for _, e := range es {
					fmt.Fprintf(&b, "A %d %s %d %s\n", e.ID, e.Stream, e.Seq, e.Body)
				}
				emit(b.String())
				for _, e := range es {
					select {
					case acked <- e:
					default:
					}
				}
			}
		})
	}
	wg.Go(func() {
		// Compactions too get killed half way now and then.
		for {
			time.Sleep(time.Duration(50+rand.IntN(150)) * time.Millisecond)
			if err := j.Compact(ctx); err != nil {
				fmt.Fprintln(os.Stderr, "child compact:", err)
				os.Exit(7)
			}
		}
	})
	wg.Go(func() {
		for {
			var ids []uint64
			var b strings.Builder
			for len(ids) < 20 {
				e := <-acked
				if rand.IntN(2) == 0 {
					continue // leave about half of them pending
				}
				ids = append(ids, e.ID)
				fmt.Fprintf(&b, "X %d %s %d\n", e.ID, e.Stream, e.Seq)
			}
			emit(b.String())
			if err := j.Delete(ctx, ids...); err != nil {
				fmt.Fprintln(os.Stderr, "child delete:", err)
				os.Exit(6)
			}
		}
	})
	wg.Wait()
	return true
}

type ackRec struct {
	stream string
	seq    int64
	body   string
}

type streamSeq struct {
	stream string
	seq    int64
}

// TestCrashSafety SIGKILLs an appending child process at random moments and
// checks after every kill that each acknowledged append is on disk, that
// sequences are contiguous and never repeat, and that the file opens cleanly.
func TestCrashSafety(t *testing.T) {
	if testing.Short() {
		t.Skip("spawns child processes")
	}
	path := filepath.Join(t.TempDir(), "crash.db")
	acked := map[uint64]ackRec{}       // every acknowledged append, all rounds
	ackedSeq := map[streamSeq]uint64{} // (stream, seq) -> id, to catch reuse
	deleteIntent := map[uint64]bool{}  // ids the child may have deleted
	deletedSeq := map[streamSeq]bool{} // same, by stream/seq
	totalAcks, midCompaction := 0, 0
	for round := range *crashIterations {
		cmd := exec.Command(os.Args[0], "-test.run=^$")
		cmd.Env = append(os.Environ(), envCrashChild+"="+path)
		var stderr strings.Builder
		cmd.Stderr = &stderr
		out, err := cmd.StdoutPipe()
		require.NoError(t, err)
		require.NoError(t, cmd.Start())
		lines := make(chan string, 1<<16)
		var readers sync.WaitGroup
		readers.Go(func() {
			defer close(lines)
			sc := bufio.NewScanner(out)
			for sc.Scan() {
				lines <- sc.Text()
			}
		})
		// Kill at a random moment: sometimes during open, mostly while appending.
		time.Sleep(time.Duration(rand.IntN(400)) * time.Millisecond)
		require.NoError(t, cmd.Process.Signal(syscall.SIGKILL))
		var roundLines []string
		for l := range lines {
			roundLines = append(roundLines, l)
		}
		readers.Wait()
		werr := cmd.Wait()
		ws, ok := cmd.ProcessState.Sys().(syscall.WaitStatus)
		require.True(t, ok && ws.Signaled() && ws.Signal() == syscall.SIGKILL,
			"round %d: child exited on its own: %v, stderr: %s", round, werr, stderr.String())
		for _, l := range roundLines {
			f := strings.SplitN(l, " ", 5)
			id, _ := strconv.ParseUint(f[1], 10, 64)
			seq, _ := strconv.ParseInt(f[3], 10, 64)
			ss := streamSeq{f[2], seq}
			switch f[0] {
			case "A":
				require.Len(t, f, 5, l)
				_, dup := acked[id]
				require.False(t, dup, "ID %d acknowledged twice", id)
				prev, dupSeq := ackedSeq[ss]
				require.False(t, dupSeq, "%v acknowledged for IDs %d and %d", ss, prev, id)
				acked[id] = ackRec{f[2], seq, f[4]}
				ackedSeq[ss] = id
				totalAcks++
			case "X":
				deleteIntent[id] = true
				deletedSeq[ss] = true
			default:
				t.Fatalf("bad child line %q", l)
			}
		}
		if _, err := os.Stat(compactPath(path)); err == nil {
			midCompaction++
		}
		verifyCrashJournal(t, path, acked, deleteIntent, deletedSeq)
		_, err = os.Stat(compactPath(path))
		require.True(t, os.IsNotExist(err), "Open must remove a half-written compaction")
	}
	t.Logf("%d rounds (%d killed mid-compaction), %d acknowledged appends, %d deletes issued",
		*crashIterations, midCompaction, totalAcks, len(deleteIntent))
	require.Greater(t, totalAcks, *crashIterations, "child made too little progress to prove anything")
}

func verifyCrashJournal(t *testing.T, path string, acked map[uint64]ackRec, deleteIntent map[uint64]bool, deletedSeq map[streamSeq]bool) {
	t.Helper()
	if _, err := os.Stat(markerPath(path)); os.IsNotExist(err) {
		// Killed before the journal was ever created: nothing can be acknowledged.
		require.Empty(t, acked)
		return
	}
	j, err := Open(path, withTestFold(Options{Source: "crash", LockTimeout: 5 * time.Second}))
	require.NoError(t, err, "journal must open cleanly after SIGKILL")
	defer func() { require.NoError(t, j.Close()) }()
	checkFile(t, j)
	present := map[uint64]*Entry{}
	seen := map[streamSeq]bool{}
	var after uint64
	for {
		es, err := j.Read(context.Background(), after, 1000)
		require.NoError(t, err)
		if len(es) == 0 {
			break
		}
		for _, e := range es {
			present[e.ID] = e
			ss := streamSeq{e.Stream, e.Seq}
			require.False(t, seen[ss], "%v stored twice", ss)
			seen[ss] = true
			after = e.ID
		}
	}
	for id, a := range acked {
		e, ok := present[id]
		if !ok {
			require.True(t, deleteIntent[id], "acknowledged append %d (%s/%d) lost", id, a.stream, a.seq)
			continue
		}
		require.Equal(t, a.stream, e.Stream)
		require.Equal(t, a.seq, e.Seq)
		require.Equal(t, a.body, string(e.Body))
	}
	st := j.Stats()
	assert.Equal(t, len(present), st.Pending)
	for stream, next := range st.NextSeq {
		for s := int64(1); s < next; s++ {
			ss := streamSeq{stream, s}
			require.True(t, seen[ss] || deletedSeq[ss], "gap: %v neither stored nor deleted (next %d)", ss, next)
		}
	}
	for id, a := range acked {
		require.Less(t, a.seq, st.NextSeq[a.stream], "sequence of %d would be reused", id)
	}
}

// runLockChild is the child side of TestLockAcrossProcesses: it holds the
// journal open until its stdin closes.
func runLockChild() bool {
	path := os.Getenv(envLockChild)
	if path == "" {
		return false
	}
	j, err := Open(path, Options{Source: "lock"})
	if err != nil {
		fmt.Fprintln(os.Stderr, "child open:", err)
		os.Exit(3)
	}
	fmt.Println("locked")
	_, _ = io.Copy(io.Discard, os.Stdin)
	if err := j.Close(); err != nil {
		os.Exit(4)
	}
	return true
}

func TestLockAcrossProcesses(t *testing.T) {
	if testing.Short() {
		t.Skip("spawns a child process")
	}
	path := filepath.Join(t.TempDir(), "lock.db")
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), envLockChild+"="+path)
	stdin, err := cmd.StdinPipe()
	require.NoError(t, err)
	out, err := cmd.StdoutPipe()
	require.NoError(t, err)
	require.NoError(t, cmd.Start())
	line, err := bufio.NewReader(out).ReadString('\n')
	require.NoError(t, err)
	require.Equal(t, "locked\n", line)

	start := time.Now()
	_, err = Open(path, Options{Source: "lock", LockTimeout: 300 * time.Millisecond})
	took := time.Since(start)
	require.ErrorIs(t, err, ErrLocked)
	assert.Contains(t, err.Error(), path)
	assert.GreaterOrEqual(t, took, 300*time.Millisecond)
	assert.Less(t, took, 2*time.Second)

	require.NoError(t, stdin.Close())
	require.NoError(t, cmd.Wait())
	j, err := Open(path, Options{Source: "lock", LockTimeout: time.Second})
	require.NoError(t, err, "lock released when the holder exits")
	require.NoError(t, j.Close())
}

func TestLockSameProcess(t *testing.T) {
	path := filepath.Join(t.TempDir(), "lock.db")
	j := openT(t, path, Options{})
	start := time.Now()
	_, err := Open(path, Options{Source: "test-src", LockTimeout: 200 * time.Millisecond})
	require.ErrorIs(t, err, ErrLocked)
	assert.Contains(t, err.Error(), path)
	assert.Less(t, time.Since(start), 2*time.Second)
	require.NoError(t, j.Close())
	j2, err := Open(path, Options{Source: "test-src", LockTimeout: 200 * time.Millisecond})
	require.NoError(t, err)
	require.NoError(t, j2.Close())
}
