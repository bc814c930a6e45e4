package testbroker

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// nodesDir holds one folder per private node; a folder whose owner process is gone is a leftover of
// a killed test run and is cleaned up by the next StartNode.
const nodesDir = "/tmp/rabbitkit-nodes"

// Node is a private RabbitMQ node: its own node name, ports and data folder, so a test may kill it,
// restart it or raise alarms without touching the shared broker.
type Node struct {
	Name string // Erlang node name, e.g. rktest-1234-ab12@localhost
	Port int    // AMQP port on 127.0.0.1
	URL  string // amqp://guest:guest@127.0.0.1:<Port>/
	Addr string // 127.0.0.1:<Port>
	TLS  *TLS   // the TLS listener; nil unless started WithTLS

	dir      string
	distPort int
	erlArgs  string // RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS, from WithErlArgs
	mu       sync.Mutex
}

// StartNode starts a private node and waits until it accepts AMQP connections (about 10 s). The node
// is stopped and its folder removed when the test ends.
func StartNode(t testing.TB, opts ...NodeOption) *Node {
	SkipShort(t)
	t.Helper()
	n := newNode(t, opts...)
	n.Start(t)
	return n
}

// newNode prepares a private node (name, ports, folder, cleanup) without starting it.
func newNode(t testing.TB, opts ...NodeOption) *Node {
	t.Helper()
	var o nodeOptions
	for _, opt := range opts {
		opt(&o)
	}
	if _, err := exec.LookPath("rabbitmq-server"); err != nil {
		t.Fatalf("testbroker: rabbitmq-server is not installed (run `make test`, which installs it): %v", err)
	}
	reapLeftovers()
	if err := os.MkdirAll(nodesDir, 0o755); err != nil {
		t.Fatalf("testbroker: %v", err)
	}
	dir, err := os.MkdirTemp(nodesDir, "node-")
	if err != nil {
		t.Fatalf("testbroker: %v", err)
	}
	n := &Node{dir: dir, erlArgs: o.erlArgs}
	n.Port = freePort(t)
	n.distPort = freePort(t)
	n.Name = fmt.Sprintf("rktest-%d-%s@localhost", os.Getpid(), filepath.Base(dir)[len("node-"):])
	n.Addr = "127.0.0.1:" + strconv.Itoa(n.Port)
	n.URL = "amqp://guest:guest@" + n.Addr + "/"
	if err := os.WriteFile(filepath.Join(dir, "enabled_plugins"), []byte("[].\n"), 0o644); err != nil {
		t.Fatalf("testbroker: %v", err)
	}
	if err := os.WriteFile(filepath.Join(dir, "owner"), []byte(strconv.Itoa(os.Getpid())), 0o644); err != nil {
		t.Fatalf("testbroker: %v", err)
	}
	if o.tls {
		n.TLS = setUpTLS(t, dir)
	}
	if err := chownRabbit(dir); err != nil {
		t.Fatalf("testbroker: %v", err)
	}
	t.Cleanup(func() {
		n.stop(20 * time.Second)
		_ = os.RemoveAll(dir)
	})
	return n
}

// Start starts the node (first start, or after Kill/Stop) and waits until it accepts AMQP.
func (n *Node) Start(t testing.TB) {
	t.Helper()
	if err := n.start(); err != nil {
		t.Fatalf("testbroker: %v", err)
	}
}

// start is Start without a testing.TB, so that several nodes can start at once.
func (n *Node) start() error {
	n.mu.Lock()
	defer n.mu.Unlock()
	cmd := exec.Command("rabbitmq-server", "-detached")
	cmd.Env = n.env()
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("start node %s: %v\n%s", n.Name, err, out)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	if err := WaitAMQP(ctx, n.URL); err != nil {
		logs, _ := exec.Command("sh", "-c", "tail -n 40 "+filepath.Join(n.dir, "log")+"/*.log").CombinedOutput()
		return fmt.Errorf("node %s did not accept AMQP on %s: %v\n%s", n.Name, n.Addr, err, logs)
	}
	if n.TLS != nil {
		for {
			c, err := net.DialTimeout("tcp", n.TLS.Addr, time.Second)
			if err == nil {
				c.Close()
				break
			}
			if ctx.Err() != nil {
				return fmt.Errorf("node %s: no TLS listener on %s: %v", n.Name, n.TLS.Addr, err)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	return nil
}

// Kill kills the node's Erlang VM with SIGKILL, like a power cut of the broker.
func (n *Node) Kill(t testing.TB) {
	t.Helper()
	n.mu.Lock()
	defer n.mu.Unlock()
	pid := n.pid()
	if pid <= 0 {
		t.Fatalf("testbroker: node %s has no pid file", n.Name)
	}
	_ = syscall.Kill(pid, syscall.SIGKILL)
	deadline := time.Now().Add(10 * time.Second)
	for syscall.Kill(pid, 0) == nil && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	_ = os.Remove(filepath.Join(n.dir, "pid"))
}

// Stop stops the node gracefully (rabbitmqctl stop).
func (n *Node) Stop(t testing.TB) {
	t.Helper()
	n.mu.Lock()
	defer n.mu.Unlock()
	if err := n.stopLocked(60 * time.Second); err != nil {
		t.Fatalf("testbroker: stop node %s: %v", n.Name, err)
	}
}

// Restart stops the node gracefully and starts it again.
func (n *Node) Restart(t testing.TB) {
	t.Helper()
	n.Stop(t)
	n.Start(t)
}

// Ctl runs rabbitmqctl against the node and returns its output.
func (n *Node) Ctl(t testing.TB, args ...string) string {
	t.Helper()
	out, err := n.ctl(60*time.Second, args...)
	if err != nil {
		t.Fatalf("testbroker: rabbitmqctl %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return out
}

// SetMemoryHighWatermark sets the node's memory high watermark: a tiny fraction (1e-7) raises the
// memory alarm at once, so publishers get connection.blocked; 0.4 clears it.
func (n *Node) SetMemoryHighWatermark(t testing.TB, fraction float64) {
	t.Helper()
	n.Ctl(t, "set_vm_memory_high_watermark", strconv.FormatFloat(fraction, 'f', -1, 64))
}

func (n *Node) ctl(timeout time.Duration, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, "rabbitmqctl", append([]string{"-n", n.Name}, args...)...)
	cmd.Env = n.env()
	out, err := cmd.CombinedOutput()
	return string(out), err
}

func (n *Node) stop(timeout time.Duration) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if err := n.stopLocked(timeout); err != nil {
		if pid := n.pid(); pid > 0 {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	}
}

func (n *Node) stopLocked(timeout time.Duration) error {
	pid := n.pid()
	if pid <= 0 || syscall.Kill(pid, 0) != nil {
		return nil // not running
	}
	out, err := n.ctl(timeout, "stop")
	if err != nil {
		return fmt.Errorf("%w: %s", err, out)
	}
	deadline := time.Now().Add(timeout)
	for syscall.Kill(pid, 0) == nil && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	return nil
}

func (n *Node) pid() int {
	b, err := os.ReadFile(filepath.Join(n.dir, "pid"))
	if err != nil {
		return 0
	}
	p, _ := strconv.Atoi(strings.TrimSpace(string(b)))
	return p
}

func (n *Node) env() []string {
	d := n.dir
	env := append(os.Environ(),
		"RABBITMQ_NODENAME="+n.Name,
		"RABBITMQ_NODE_IP_ADDRESS=127.0.0.1",
		"RABBITMQ_NODE_PORT="+strconv.Itoa(n.Port),
		"RABBITMQ_DIST_PORT="+strconv.Itoa(n.distPort),
		"RABBITMQ_MNESIA_BASE="+filepath.Join(d, "mnesia"),
		"RABBITMQ_LOG_BASE="+filepath.Join(d, "log"),
		"RABBITMQ_PID_FILE="+filepath.Join(d, "pid"),
		"RABBITMQ_ENABLED_PLUGINS_FILE="+filepath.Join(d, "enabled_plugins"),
		"RABBITMQ_CONFIG_FILE="+filepath.Join(d, "rabbitmq"),
		"RABBITMQ_ADVANCED_CONFIG_FILE="+filepath.Join(d, "advanced.config"),
	)
	if n.erlArgs != "" {
		env = append(env, "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="+n.erlArgs)
	}
	return env
}

// reapLeftovers kills nodes whose owning test process no longer runs (a test binary killed by a
// timeout cannot run its cleanups) and removes their folders.
func reapLeftovers() {
	dirs, _ := filepath.Glob(filepath.Join(nodesDir, "node-*"))
	for _, d := range dirs {
		b, err := os.ReadFile(filepath.Join(d, "owner"))
		if err != nil {
			continue
		}
		owner, _ := strconv.Atoi(strings.TrimSpace(string(b)))
		if owner > 0 && syscall.Kill(owner, 0) == nil {
			continue
		}
		if pb, err := os.ReadFile(filepath.Join(d, "pid")); err == nil {
			if pid, _ := strconv.Atoi(strings.TrimSpace(string(pb))); pid > 0 {
				_ = syscall.Kill(pid, syscall.SIGKILL)
			}
		}
		_ = os.RemoveAll(d)
	}
}

func freePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("testbroker: %v", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// chownRabbit gives the folder to the rabbitmq user: the Debian wrapper drops to it when run as root.
func chownRabbit(dir string) error {
	u, err := user.Lookup("rabbitmq")
	if err != nil {
		return nil // not root / no such user: the node runs as we do
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	return filepath.Walk(dir, func(p string, _ os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		return os.Chown(p, uid, gid)
	})
}
