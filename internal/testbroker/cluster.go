package testbroker

import (
	"encoding/json"
	"fmt"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// Cluster is a RabbitMQ cluster of private nodes on this machine: each node has its own node name,
// AMQP and distribution ports and data folder (see StartNode); they share the rabbitmq user's Erlang
// cookie (/var/lib/rabbitmq/.erlang.cookie, which the Debian wrapper makes every node and every
// rabbitmqctl use). Kill, stop or restart single nodes through Node(i).
type Cluster struct {
	nodes []*Node
}

// StartCluster starts n private nodes at once, joins nodes 1..n-1 to node 0 (rabbitmqctl stop_app,
// join_cluster, start_app) and waits until cluster_status shows all n running. opts apply to every
// node. Everything is stopped and removed when the test ends.
func StartCluster(t testing.TB, n int, opts ...NodeOption) *Cluster {
	SkipShort(t)
	t.Helper()
	if n < 1 {
		t.Fatalf("testbroker: a cluster of %d nodes", n)
	}
	c := &Cluster{}
	for range n {
		c.nodes = append(c.nodes, newNode(t, opts...))
	}
	// Registered after the nodes' own cleanups, so it runs first: stop them all at once (a graceful
	// stop takes seconds each); the nodes' cleanups then find them stopped and remove the folders.
	t.Cleanup(func() {
		var wg sync.WaitGroup
		for _, nd := range c.nodes {
			wg.Go(func() { nd.stop(20 * time.Second) })
		}
		wg.Wait()
	})
	start := time.Now()
	if err := each(c.nodes, (*Node).start); err != nil {
		t.Fatalf("testbroker: cluster: %v", err)
	}
	booted := time.Since(start)
	// One at a time: joining in parallel was measured no faster here (6.2-9.6 s against 7.1 s for
	// two nodes on 2 cores: the CPU is the limit, not the waiting).
	seed := c.nodes[0].Name
	for _, nd := range c.nodes[1:] {
		for _, args := range [][]string{{"stop_app"}, {"join_cluster", seed}, {"start_app"}} {
			if out, err := nd.ctl(2*time.Minute, args...); err != nil {
				t.Fatalf("testbroker: cluster: rabbitmqctl -n %s %s: %v\n%s", nd.Name, strings.Join(args, " "), err, out)
			}
		}
	}
	if err := c.waitRunning(2 * time.Minute); err != nil {
		t.Fatalf("testbroker: cluster: %v", err)
	}
	t.Logf("testbroker: %d-node cluster up in %v (nodes booted in parallel in %v, joined in %v)",
		n, time.Since(start).Round(100*time.Millisecond), booted.Round(100*time.Millisecond), (time.Since(start) - booted).Round(100*time.Millisecond))
	return c
}

// each runs fn on every node at once and returns the first error.
func each(nodes []*Node, fn func(*Node) error) error {
	errs := make([]error, len(nodes))
	var wg sync.WaitGroup
	for i, nd := range nodes {
		wg.Go(func() { errs[i] = fn(nd) })
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			return err
		}
	}
	return nil
}

// Len is the number of nodes.
func (c *Cluster) Len() int { return len(c.nodes) }

// Node returns node i (0-based); node 0 is the one the others joined.
func (c *Cluster) Node(i int) *Node { return c.nodes[i] }

// URLs returns every node's amqp URL, in node order.
func (c *Cluster) URLs() []string {
	out := make([]string, len(c.nodes))
	for i, nd := range c.nodes {
		out[i] = nd.URL
	}
	return out
}

// Index returns the index of the node with the Erlang node name (as rabbitmqctl prints it), or -1.
func (c *Cluster) Index(name string) int {
	return slices.IndexFunc(c.nodes, func(nd *Node) bool { return nd.Name == name })
}

// NodeOfAddr returns the index of the node serving the AMQP address addr (host:port, the server
// side of a client connection, e.g. amqp.Connection.RemoteAddr().String()), or -1.
func (c *Cluster) NodeOfAddr(addr string) int {
	_, p, err := net.SplitHostPort(addr)
	if err != nil {
		return -1
	}
	port, _ := strconv.Atoi(p)
	return slices.IndexFunc(c.nodes, func(nd *Node) bool { return nd.Port == port })
}

// running reports whether the node's VM is alive (pid file and process), without asking it.
func (n *Node) running() bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	pid := n.pid()
	return pid > 0 && syscall.Kill(pid, 0) == nil
}

// Ctl runs rabbitmqctl on the first node that is up and returns its output: for cluster-wide
// questions (list_queues, list_connections, cluster_status) while some node is down.
func (c *Cluster) Ctl(t testing.TB, args ...string) string {
	t.Helper()
	out, err := c.ctl(30*time.Second, args...)
	if err != nil {
		t.Fatalf("testbroker: cluster: %v", err)
	}
	return out
}

func (c *Cluster) ctl(timeout time.Duration, args ...string) (string, error) {
	var errs []string
	for _, nd := range c.nodes {
		if !nd.running() {
			continue
		}
		out, err := nd.ctl(timeout, args...)
		if err == nil {
			return out, nil
		}
		errs = append(errs, fmt.Sprintf("-n %s: %v: %s", nd.Name, err, strings.TrimSpace(out)))
	}
	return "", fmt.Errorf("rabbitmqctl %s failed on every running node: %s", strings.Join(args, " "), strings.Join(errs, "; "))
}

// RunningNodes returns the indexes of the nodes cluster_status lists as running.
func (c *Cluster) RunningNodes(t testing.TB) []int {
	t.Helper()
	idx, err := c.runningNodes()
	if err != nil {
		t.Fatalf("testbroker: cluster: %v", err)
	}
	return idx
}

func (c *Cluster) runningNodes() ([]int, error) {
	out, err := c.ctl(30*time.Second, "cluster_status", "--formatter", "json")
	if err != nil {
		return nil, err
	}
	var st struct {
		Running []string `json:"running_nodes"`
	}
	if err := json.Unmarshal([]byte(jsonPart(out)), &st); err != nil {
		return nil, fmt.Errorf("cluster_status: %v: %s", err, out)
	}
	var idx []int
	for _, name := range st.Running {
		if i := c.Index(name); i >= 0 {
			idx = append(idx, i)
		}
	}
	slices.Sort(idx)
	return idx, nil
}

// WaitRunning waits until cluster_status lists every node as running: after Start of a node that
// was killed, it rejoins the cluster.
func (c *Cluster) WaitRunning(t testing.TB, timeout time.Duration) {
	t.Helper()
	if err := c.waitRunning(timeout); err != nil {
		t.Fatalf("testbroker: cluster: %v", err)
	}
}

func (c *Cluster) waitRunning(timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		idx, err := c.runningNodes()
		if err == nil && len(idx) == len(c.nodes) {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("not all %d nodes running after %v: running %v, %v", len(c.nodes), timeout, idx, err)
		}
		time.Sleep(500 * time.Millisecond)
	}
}

// QueueLeader returns the index of the node leading quorum queue q (vhost "/"), or -1 when no
// running node names one (the queue has no leader right now, or is not a quorum queue).
func (c *Cluster) QueueLeader(t testing.TB, q string) int {
	t.Helper()
	leader, _ := c.QueueMembers(t, q)
	return leader
}

// QueueMembers returns the index of the node leading quorum queue q (vhost "/", -1 when none is
// named) and the indexes of its members that are online (list_queues name leader online).
func (c *Cluster) QueueMembers(t testing.TB, q string) (leader int, online []int) {
	t.Helper()
	out, err := c.ctl(30*time.Second, "list_queues", "-q", "name", "leader", "online", "--formatter", "json")
	if err != nil {
		t.Fatalf("testbroker: cluster: %v", err)
	}
	var qs []struct {
		Name   string          `json:"name"`
		Leader string          `json:"leader"`
		Online json.RawMessage `json:"online"`
	}
	if err := json.Unmarshal([]byte(jsonPart(out)), &qs); err != nil {
		t.Fatalf("testbroker: cluster: list_queues: %v: %s", err, out)
	}
	for _, e := range qs {
		if e.Name != q {
			continue
		}
		var names []string
		_ = json.Unmarshal(e.Online, &names) // a classic queue prints "" here
		for _, n := range names {
			if i := c.Index(n); i >= 0 {
				online = append(online, i)
			}
		}
		slices.Sort(online)
		return c.Index(e.Leader), online
	}
	return -1, nil
}

// WaitQueueMembers waits until quorum queue q has a leader and every node as an online member (a
// restarted node has recovered its replica), and returns the leader's index.
func (c *Cluster) WaitQueueMembers(t testing.TB, q string, timeout time.Duration) int {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		leader, online := c.QueueMembers(t, q)
		if leader >= 0 && len(online) == len(c.nodes) {
			return leader
		}
		if time.Now().After(deadline) {
			t.Fatalf("testbroker: cluster: queue %s: leader %d, online members %v after %v", q, leader, online, timeout)
		}
		time.Sleep(500 * time.Millisecond)
	}
}

// WaitQueueLeader waits until quorum queue q has a leader on a running node and returns its index.
func (c *Cluster) WaitQueueLeader(t testing.TB, q string, timeout time.Duration) int {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		if i := c.QueueLeader(t, q); i >= 0 && c.nodes[i].running() {
			return i
		}
		if time.Now().After(deadline) {
			t.Fatalf("testbroker: cluster: queue %s has no leader on a running node after %v", q, timeout)
		}
		time.Sleep(500 * time.Millisecond)
	}
}

// Conn is a client connection as the cluster lists it.
type Conn struct {
	Name     string // the client-provided connection name (amqp.Config.Properties["connection_name"])
	Node     int    // index of the node the connection is on
	PeerPort int    // the client's port
}

// Connections lists the client connections on every running node.
func (c *Cluster) Connections(t testing.TB) []Conn {
	t.Helper()
	out, err := c.ctl(30*time.Second, "list_connections", "-q", "port", "peer_port", "client_properties", "--formatter", "json")
	if err != nil {
		t.Fatalf("testbroker: cluster: %v", err)
	}
	var rows []struct {
		Port     int               `json:"port"`
		PeerPort int               `json:"peer_port"`
		Props    []json.RawMessage `json:"client_properties"`
	}
	if err := json.Unmarshal([]byte(jsonPart(out)), &rows); err != nil {
		t.Fatalf("testbroker: cluster: list_connections: %v: %s", err, out)
	}
	var conns []Conn
	for _, r := range rows {
		cn := Conn{Node: slices.IndexFunc(c.nodes, func(nd *Node) bool { return nd.Port == r.Port }), PeerPort: r.PeerPort}
		for _, p := range r.Props { // each is ["connection_name","longstr","..."]
			var kv []any
			if json.Unmarshal(p, &kv) == nil && len(kv) == 3 && kv[0] == "connection_name" {
				cn.Name, _ = kv[2].(string)
			}
		}
		conns = append(conns, cn)
	}
	return conns
}

// NodeOfConnection returns the node of the first connection whose client-provided name starts with
// prefix, or -1 when none is open.
func (c *Cluster) NodeOfConnection(t testing.TB, prefix string) int {
	t.Helper()
	for _, cn := range c.Connections(t) {
		if strings.HasPrefix(cn.Name, prefix) {
			return cn.Node
		}
	}
	return -1
}

// WaitConnection waits until a connection named prefix... is open on a running node and returns
// the node's index.
func (c *Cluster) WaitConnection(t testing.TB, prefix string, timeout time.Duration) int {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		if i := c.NodeOfConnection(t, prefix); i >= 0 && c.nodes[i].running() {
			return i
		}
		if time.Now().After(deadline) {
			t.Fatalf("testbroker: cluster: no connection named %q on a running node after %v", prefix, timeout)
		}
		time.Sleep(500 * time.Millisecond)
	}
}

// jsonPart drops anything rabbitmqctl printed before the JSON document (a warning, say).
func jsonPart(out string) string {
	if i := strings.IndexAny(out, "[{"); i > 0 {
		return out[i:]
	}
	return out
}
