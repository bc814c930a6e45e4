package integration

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// proc is one run of an example binary. Its stdout and stderr are split into lines and handed to
// the callbacks (on exec's copying goroutines, owned by cmd.Wait) and copied to a log file in the
// test's temp dir. The test's cleanup SIGKILLs and reaps it if it is still running.
type proc struct {
	name    string
	cmd     *exec.Cmd
	log     *os.File
	started time.Time

	done    chan struct{} // closed once the process exited and its output was read
	waitErr error         // valid after done

	mu     sync.Mutex
	tail   []string // last stderr lines, for failure messages
	killed bool     // we sent SIGKILL
}

// procSpec describes a process to start.
type procSpec struct {
	name     string // for logs, e.g. "publisher-a#3"
	bin      string
	args     []string
	onStdout func(line string)
	onStderr func(line string)
}

// startProc starts the process. It must be called on the test goroutine.
func startProc(t testing.TB, dir string, s procSpec) *proc {
	t.Helper()
	logf, err := os.Create(filepath.Join(dir, strings.NewReplacer("#", "-", "/", "-").Replace(s.name)+".log"))
	if err != nil {
		t.Fatalf("create log: %v", err)
	}
	p := &proc{name: s.name, log: logf, done: make(chan struct{}), started: time.Now()}
	cmd := exec.Command(s.bin, s.args...)
	cmd.Stdout = &lineWriter{fn: func(l string) {
		if s.onStdout != nil {
			s.onStdout(l)
		}
	}}
	cmd.Stderr = &lineWriter{fn: func(l string) {
		p.mu.Lock()
		p.tail = append(p.tail, l)
		if len(p.tail) > 30 {
			p.tail = p.tail[len(p.tail)-30:]
		}
		p.mu.Unlock()
		fmt.Fprintln(logf, l)
		if s.onStderr != nil {
			s.onStderr(l)
		}
	}}
	// Own process group (a signal to the test's group does not reach it) and SIGKILL when the
	// test binary dies without running its cleanups (a -timeout panic): no orphan keeps publishing.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	cmd.WaitDelay = 10 * time.Second
	fmt.Fprintf(logf, "# %s %s\n", s.bin, strings.Join(s.args, " "))
	if err := cmd.Start(); err != nil {
		logf.Close()
		t.Fatalf("start %s: %v", s.name, err)
	}
	p.cmd = cmd
	go func() { // owned by p: joined through p.done by wait, kill and the cleanup below
		p.waitErr = cmd.Wait()
		cmd.Stdout.(*lineWriter).flush()
		cmd.Stderr.(*lineWriter).flush()
		fmt.Fprintf(logf, "# exit: %v\n", p.waitErr)
		logf.Close()
		close(p.done)
	}()
	t.Cleanup(func() { p.kill() })
	return p
}

// kill sends SIGKILL (unless the process already exited) and waits for it to be reaped.
func (p *proc) kill() {
	select {
	case <-p.done:
		return
	default:
	}
	p.mu.Lock()
	p.killed = true
	p.mu.Unlock()
	_ = p.cmd.Process.Signal(syscall.SIGKILL)
	<-p.done
}

// term sends SIGTERM and waits up to grace for a clean exit, then SIGKILLs. It returns the exit
// error (nil for exit status 0).
func (p *proc) term(grace time.Duration) error {
	select {
	case <-p.done:
		return p.waitErr
	default:
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
		return p.waitErr
	case <-time.After(grace):
		p.kill()
		return fmt.Errorf("%s did not exit within %v of SIGTERM: killed", p.name, grace)
	}
}

// wait waits for the process to exit by itself or ctx to end.
func (p *proc) wait(ctx context.Context) error {
	select {
	case <-p.done:
		return p.waitErr
	case <-ctx.Done():
		return fmt.Errorf("%s still running: %w", p.name, ctx.Err())
	}
}

// exited reports whether the process has exited.
func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// wasKilled reports whether we SIGKILLed it (as opposed to it exiting by itself).
func (p *proc) wasKilled() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.killed
}

// stderrTail returns the last lines it wrote to stderr.
func (p *proc) stderrTail() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return strings.Join(p.tail, "\n")
}

// describe formats the exit for a failure message.
func (p *proc) describe() string {
	var ee *exec.ExitError
	status := "running"
	if p.exited() {
		status = "exit 0"
		if errors.As(p.waitErr, &ee) {
			status = ee.String()
		} else if p.waitErr != nil {
			status = p.waitErr.Error()
		}
	}
	return fmt.Sprintf("%s (%s), last stderr lines:\n%s", p.name, status, p.stderrTail())
}

// lineWriter calls fn for every complete line written to it. exec copies a pipe into it from one
// goroutine, so it needs no lock.
type lineWriter struct {
	fn  func(string)
	buf []byte
}

func (w *lineWriter) Write(b []byte) (int, error) {
	w.buf = append(w.buf, b...)
	for {
		i := bytes.IndexByte(w.buf, '\n')
		if i < 0 {
			break
		}
		w.fn(string(w.buf[:i]))
		w.buf = w.buf[i+1:]
	}
	if len(w.buf) == 0 {
		w.buf = nil // let a large buffer go
	}
	return len(b), nil
}

// flush drops a trailing partial line: a process killed mid-write left it, and a partial
// "accepted" line must not count (it would be a truncated, possibly wrong stamp). It is logged.
func (w *lineWriter) flush() {
	if len(w.buf) > 0 {
		w.fn("# partial line dropped: " + string(w.buf))
	}
	w.buf = nil
}
