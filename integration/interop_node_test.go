package integration

import (
	"bufio"
	"bytes"
	"cmp"
	"context"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
	bolt "go.etcd.io/bbolt"

	"github.com/rabbitkit/rabbitkit/consumer"
	"github.com/rabbitkit/rabbitkit/consumer/dedup"
	"github.com/rabbitkit/rabbitkit/internal/testbroker"
	"github.com/rabbitkit/rabbitkit/metrics"
	"github.com/rabbitkit/rabbitkit/protocol"
	"github.com/rabbitkit/rabbitkit/topology"
)

// nodeInteropDir holds the Node.js publisher (publish.js), written from docs/PROTOCOL.md alone.
const nodeInteropDir = "interop/node"

// TestNodeInterop: a publisher in another language (Node.js, amqplib), written from the spec text,
// interoperates with consumer/. "vectors" checks its encoder and decoder against
// protocol/testdata/v2-vectors.json. "publish" has it send v2 stamps (in message-id and in the
// rk-stamp header), v1 stamps, duplicates (also of one stamp in both forms), non-stamps and forged
// or malformed stamps to a queue, and the Go consumer must apply every valid stamp exactly once in
// per-stream order, drop every duplicate before the handler, park every bad one with its reason,
// and report only the plan's deliberate gap.
func TestNodeInterop(t *testing.T) {
	if testing.Short() {
		t.Skip("needs the shared RabbitMQ and Node.js")
	}
	node, err := exec.LookPath("node")
	if err != nil {
		t.Fatal("node is not installed: run `bash scripts/ensure-node.sh` (make test does)")
	}
	if _, err := os.Stat(filepath.Join(nodeInteropDir, "node_modules", "amqplib", "package.json")); err != nil {
		t.Fatalf("%s/node_modules is not installed (%v): run `bash scripts/ensure-node.sh` (make test does)", nodeInteropDir, err)
	}

	t.Run("vectors", func(t *testing.T) {
		vectors, err := filepath.Abs(filepath.Join("..", "protocol", "testdata", "v2-vectors.json"))
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		cmd := exec.CommandContext(ctx, node, "publish.js", "vectors", vectors)
		cmd.Dir = nodeInteropDir
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("node publish.js vectors: %v\n%s", err, out)
		}
		if !strings.Contains(string(out), "all pass") {
			t.Fatalf("no success summary:\n%s", out)
		}
		t.Logf("%s", bytes.TrimSpace(out))
	})

	t.Run("publish", func(t *testing.T) { testNodePublish(t, node) })
}

// nodeHeader is a header value of a "raw" plan item: an AMQP field type and its value as text.
type nodeHeader struct {
	Type  string `json:"type"`
	Value string `json:"value"`
}

// nodeItem is one message of the plan that publish.js reads.
type nodeItem struct {
	Form      string                `json:"form"` // v2, v2-header, v1, raw
	Source    string                `json:"source,omitempty"`
	Epoch     string                `json:"epoch,omitempty"`
	Stream    string                `json:"stream,omitempty"`
	Seq       string                `json:"seq,omitempty"`
	MessageID string                `json:"message_id,omitempty"`
	Headers   map[string]nodeHeader `json:"headers,omitempty"`
	Body      string                `json:"body"`
}

type nodeOutcome int

const (
	nodeApplied   nodeOutcome = iota + 1 // the handler runs once, with this stamp
	nodeDuplicate                        // dropped before the handler
	nodeParked                           // published to the parking queue, never handled
	nodeUnstamped                        // not a rabbitkit message: passed through (NoStampPassThrough)
)

// nodeExpect is what the consumer must do with one plan item.
type nodeExpect struct {
	outcome nodeOutcome
	stamp   protocol.Stamp // applied and duplicate; parked when stamped
	form    string         // which stamp forms the item carries, for the handler's view: v2, v2-header, v1, multi
	msgID   string         // the message-id the handler must see (applied, unstamped)
	v1only  bool           // a valid stamp carried only by the v1 headers (MetricLegacyStamps)
	reason  string         // parked: a substring of the reason
	stamped bool           // parked: a valid stamp that dedup refused (the 2^62 jump)
}

// nodePlan builds the plan and, beside it, what the consumer must do with each item.
type nodePlan struct {
	items  []nodeItem
	expect []nodeExpect
	seen   map[protocol.Stamp]bool
}

func nodeBody(s protocol.Stamp) string { return "body of " + s.String() } // the same for every copy

func nodeS(v string) nodeHeader            { return nodeHeader{"S", v} }
func nodeL(v int64) nodeHeader             { return nodeHeader{"l", strconv.FormatInt(v, 10)} }
func nodeT(typ string, v int64) nodeHeader { return nodeHeader{typ, strconv.FormatInt(v, 10)} }

func nodeV1(source, stream nodeHeader, epoch, seq nodeHeader) map[string]nodeHeader {
	return map[string]nodeHeader{"rk-source": source, "rk-epoch": epoch, "rk-stream": stream, "rk-seq": seq}
}

func nodeV1Of(s protocol.Stamp) map[string]nodeHeader {
	return nodeV1(nodeS(s.Source), nodeS(s.Stream), nodeL(s.Epoch), nodeL(s.Seq))
}

func nodeMerge(hs ...map[string]nodeHeader) map[string]nodeHeader {
	out := map[string]nodeHeader{}
	for _, h := range hs {
		for k, v := range h {
			out[k] = v
		}
	}
	return out
}

// add records a valid stamp sent in some form: applied the first time, a duplicate afterwards.
func (p *nodePlan) add(it nodeItem, s protocol.Stamp, form, msgID string, v1only bool) {
	e := nodeExpect{outcome: nodeApplied, stamp: s, form: form, msgID: msgID, v1only: v1only}
	if p.seen[s] {
		e.outcome = nodeDuplicate
	}
	p.seen[s] = true
	it.Body = nodeBody(s)
	p.items = append(p.items, it)
	p.expect = append(p.expect, e)
}

// stamped sends s in one of the forms that publish.js encodes itself (v2, v2-header, v1).
func (p *nodePlan) stamped(form string, s protocol.Stamp, appID string) {
	it := nodeItem{Form: form, Source: s.Source, Epoch: strconv.FormatInt(s.Epoch, 10), Stream: s.Stream, Seq: strconv.FormatInt(s.Seq, 10)}
	msgID := s.String()
	switch form {
	case "v2-header":
		it.MessageID, msgID = appID, appID
	case "v1":
		msgID = ""
	}
	p.add(it, s, form, msgID, form == "v1")
}

// rawStamped sends a valid stamp in literal forms (other integer types, several forms at once).
func (p *nodePlan) rawStamped(s protocol.Stamp, msgID string, h map[string]nodeHeader) {
	v1only := msgID == "" && h["rk-stamp"] == (nodeHeader{})
	form := "multi"
	if v1only {
		form = "v1"
	}
	p.add(nodeItem{Form: "raw", MessageID: msgID, Headers: h}, s, form, msgID, v1only)
}

// forged sends a message that carries a stamp form that is malformed (or forms that disagree): it
// must be parked with a reason containing "malformed" and reason.
func (p *nodePlan) forged(name, msgID string, h map[string]nodeHeader, reason string) {
	p.items = append(p.items, nodeItem{Form: "raw", MessageID: msgID, Headers: h, Body: "forged: " + name})
	p.expect = append(p.expect, nodeExpect{outcome: nodeParked, reason: reason})
}

// jump sends a valid stamp far beyond its stream's watermark (2^62): dedup calls it suspicious and
// it is parked without touching the stream's state.
func (p *nodePlan) jump(s protocol.Stamp) {
	p.items = append(p.items, nodeItem{Form: "v2", Source: s.Source, Epoch: strconv.FormatInt(s.Epoch, 10), Stream: s.Stream,
		Seq: strconv.FormatInt(s.Seq, 10), Body: "forged: jump to " + s.String()})
	p.expect = append(p.expect, nodeExpect{outcome: nodeParked, stamp: s, reason: "suspicious", stamped: true})
}

// plain sends a message that is not a rabbitkit message at all.
func (p *nodePlan) plain(msgID string, h map[string]nodeHeader) {
	p.items = append(p.items, nodeItem{Form: "raw", MessageID: msgID, Headers: h, Body: fmt.Sprintf("plain #%d", len(p.items))})
	p.expect = append(p.expect, nodeExpect{outcome: nodeUnstamped, msgID: msgID})
}

const (
	nodeSrcA   = "node-pub-1"
	nodeEpochA = int64(8070450532247928831) // 19 digits, far beyond a JS number's 2^53
	nodeSrcB   = "node-legacy%1"
	nodeEpochB = int64(9007199254740993) // 2^53+1: a JS number would round it
	nodeSrcC   = "node-typed"
	nodeEpochC = int64(7)
)

func nodeA(stream string, seq int64) protocol.Stamp {
	return protocol.Stamp{Source: nodeSrcA, Epoch: nodeEpochA, Stream: stream, Seq: seq}
}

func buildNodePlan() *nodePlan {
	p := &nodePlan{seen: map[protocol.Stamp]bool{}}
	const (
		pay    = "payments/captured"
		zuri   = "züri:événements 1" // ':', UTF-8 and a space: all escaped
		keyed  = "app/keyed"         // v2-header: the application sets its own message-id
		gappy  = "gappy"             // seq 3 is never sent: the one gap to report
		legacy = "/legacy"
		typed  = "typed"
	)
	b := func(seq int64) protocol.Stamp {
		return protocol.Stamp{Source: nodeSrcB, Epoch: nodeEpochB, Stream: legacy, Seq: seq}
	}
	c := func(seq int64) protocol.Stamp {
		return protocol.Stamp{Source: nodeSrcC, Epoch: nodeEpochC, Stream: typed, Seq: seq}
	}
	longStream := strings.Repeat("long/", 30)
	ea := strconv.FormatInt(nodeEpochA, 10)
	id := func(s protocol.Stamp) string { return s.String() } // Go's encoding, for literal forms only
	typedV1 := func(s protocol.Stamp, epochType, seqType string) map[string]nodeHeader {
		return nodeV1(nodeS(s.Source), nodeHeader{"x", hex.EncodeToString([]byte(s.Stream))}, nodeT(epochType, s.Epoch), nodeT(seqType, s.Seq))
	}

	for seq := int64(1); seq <= 10; seq++ {
		p.stamped("v2", nodeA(pay, seq), "")
		p.stamped("v2", nodeA(zuri, seq), "")
		p.stamped("v2-header", nodeA(keyed, seq), fmt.Sprintf("order-%d", seq))
		p.stamped("v1", b(seq), "")
		switch seq {
		case 2:
			p.stamped("v2", nodeA(gappy, 1), "")
			p.stamped("v2", nodeA(gappy, 2), "")
			// v1 with every other AMQP integer type, and the stream as a byte array.
			p.rawStamped(c(1), "", typedV1(c(1), "b", "b"))
			p.rawStamped(c(2), "", typedV1(c(2), "B", "s"))
		case 3:
			p.plain("order-17", nil)
			p.plain("RK2:node-pub-1:1:s:1", nil) // the prefix is case-sensitive
			p.plain("rk:node-pub-1:1:s:1", nil)  // no version digits
			p.plain("rk2", nil)                  // no ':'
			p.plain("", nil)                     // no message-id, no headers
			// Unknown rk- headers are ignored.
			p.plain("order-18", map[string]nodeHeader{"rk-trace": nodeS("abc")})
			p.forged("v1 and v2 disagree", id(nodeA(pay, 3)), nodeV1Of(nodeA(pay, 11)), "disagree")
			p.forged("message-id and rk-stamp disagree", id(nodeA(keyed, 2)), map[string]nodeHeader{"rk-stamp": nodeS(id(nodeA(keyed, 12)))}, "disagree")
			p.forged("rk-stamp and v1 disagree", "order-77", nodeMerge(map[string]nodeHeader{"rk-stamp": nodeS(id(b(2)))}, nodeV1Of(b(12))), "disagree")
			p.forged("v1 and v2 disagree on the epoch", id(b(3)), nodeV1Of(protocol.Stamp{Source: nodeSrcB, Epoch: nodeEpochB + 1, Stream: legacy, Seq: 3}), "disagree")
			p.forged("rk3: prefix", "rk3:"+nodeSrcA+":1:"+pay+":1", nil, "rk3")
			p.forged("11-digit version", "rk12345678901:a:1:b:1", nil, "rk12345678901 is not supported")
			p.forged("rk1: prefix", "rk1:"+nodeSrcA+":1:"+pay+":1", nil, "rk1")
			p.forged("rk02: prefix", "rk02:"+nodeSrcA+":1:"+pay+":1", nil, "")
		case 4:
			p.stamped("v2", nodeA(pay, 3), "") // a resend
			// A valid v2 stamp beside an unknown rk- header (ignored).
			p.rawStamped(nodeA(gappy, 4), id(nodeA(gappy, 4)), map[string]nodeHeader{"rk-trace": nodeS("abc")})
			p.rawStamped(c(3), "", typedV1(c(3), "u", "I"))
			p.rawStamped(c(4), "", typedV1(c(4), "i", "l"))
		case 5:
			p.jump(nodeA(pay, 1<<62))
			p.stamped("v2-header", nodeA(keyed, 2), "order-2") // a resend
		case 6:
			p.stamped("v1", b(4), "") // a resend
			// All three forms, agreeing: one stamp.
			p.rawStamped(nodeA(gappy, 5), id(nodeA(gappy, 5)), nodeMerge(map[string]nodeHeader{"rk-stamp": nodeS(id(nodeA(gappy, 5)))}, nodeV1Of(nodeA(gappy, 5))))
			bad := func(name, wire string) { p.forged(name, wire, nil, "") }
			pre := "rk2:" + nodeSrcA + ":" + ea + ":"
			bad("leading zero seq", pre+pay+":011")
			bad("leading zero epoch", "rk2:"+nodeSrcA+":0"+ea+":"+pay+":11")
			bad("seq 0", pre+pay+":0")
			bad("lower-case escape", pre+"z%c3%bcri:11")
			bad("escape of a literal byte", pre+"payments%2Fcaptured:11")
			bad("truncated escape", pre+"payments/captured%2:11")
			bad("escape not hex", pre+"payments/captured%zz:11")
			bad("trailing bytes", pre+pay+":11x")
			bad("trailing ':'", pre+pay+":11:")
			bad("missing seq", pre+pay)
			bad("signed seq", pre+pay+":+11")
			bad("negative epoch", "rk2:"+nodeSrcA+":-1:"+pay+":11")
			bad("seq overflows int64", pre+pay+":9223372036854775808")
			bad("epoch overflows int64", "rk2:"+nodeSrcA+":99999999999999999999:"+pay+":11")
			bad("unescaped ':' in source", "rk2:node:pub:"+ea+":"+pay+":11")
			bad("literal space", "rk2:node pub:"+ea+":"+pay+":11")
			bad("literal non-ASCII", "rk2:nöde:"+ea+":"+pay+":11")
			bad("empty source", "rk2::"+ea+":"+pay+":11")
			bad("empty stream", pre+":11")
		case 7:
			// v1 has no length limits: a stream of 150 bytes, which v2 could not carry.
			p.stamped("v1", protocol.Stamp{Source: nodeSrcB, Epoch: nodeEpochB, Stream: longStream, Seq: 1}, "")
			p.stamped("v1", protocol.Stamp{Source: nodeSrcB, Epoch: nodeEpochB, Stream: longStream, Seq: 2}, "")
		case 8:
			p.stamped("v1", nodeA(pay, 5), "") // a resend in the other form: still a duplicate
		}
	}
	// Resends at the end, in the same and in the other form.
	p.stamped("v2", nodeA(zuri, 7), "")
	p.stamped("v2", nodeA(pay, 10), "")
	p.stamped("v2-header", nodeA(keyed, 9), "order-9")
	p.stamped("v1", b(1), "")
	p.stamped("v2", b(6), "")
	p.stamped("v2", nodeA(keyed, 8), "")
	p.stamped("v2-header", nodeA(zuri, 9), "resend-9")
	p.stamped("v2", c(2), "")
	p.stamped("v1", protocol.Stamp{Source: nodeSrcB, Epoch: nodeEpochB, Stream: longStream, Seq: 1}, "")
	p.rawStamped(nodeA(zuri, 4), id(nodeA(zuri, 4)), nodeV1Of(nodeA(zuri, 4)))

	// The rk-stamp header and the v1 headers, broken.
	h := func(name string, hs map[string]nodeHeader, reason string) { p.forged(name, "order-"+name, hs, reason) }
	stampH := func(v nodeHeader) map[string]nodeHeader { return map[string]nodeHeader{"rk-stamp": v} }
	h("rk-stamp-not-rk2", stampH(nodeS("order-forged")), "rk-stamp")
	h("rk-stamp-v1-style", stampH(nodeS(nodeSrcA+"/"+ea+"/"+pay+"/11")), "rk-stamp")
	h("rk-stamp-rk3", stampH(nodeS("rk3:"+nodeSrcA+":1:s:1")), "rk-stamp")
	h("rk-stamp-empty", stampH(nodeS("")), "rk-stamp")
	h("rk-stamp-long-int", stampH(nodeL(11)), "rk-stamp")
	h("rk-stamp-bad-escape", stampH(nodeS("rk2:"+nodeSrcA+":"+ea+":%c3%a9:11")), "rk-stamp")
	h("rk-stamp-over-255-bytes", stampH(nodeS("rk2:"+strings.Repeat("x", 200)+":1:"+strings.Repeat("y", 60)+":1")), "rk-stamp")
	v1 := nodeV1Of(nodeA(pay, 11))
	with := func(k string, v nodeHeader) map[string]nodeHeader { return nodeMerge(v1, map[string]nodeHeader{k: v}) }
	without := func(ks ...string) map[string]nodeHeader {
		m := nodeMerge(v1)
		for _, k := range ks {
			delete(m, k)
		}
		return m
	}
	h("v1-partial", without("rk-epoch", "rk-stream"), "missing")
	h("v1-seq-string", with("rk-seq", nodeS("11")), "rk-seq")
	h("v1-seq-zero", with("rk-seq", nodeL(0)), "seq")
	h("v1-seq-bool", with("rk-seq", nodeHeader{"t", "true"}), "rk-seq")
	h("v1-epoch-negative", with("rk-epoch", nodeL(-1)), "epoch")
	h("v1-epoch-double", with("rk-epoch", nodeHeader{"d", "7"}), "rk-epoch")
	h("v1-source-empty", with("rk-source", nodeS("")), "source")
	h("v1-source-int", with("rk-source", nodeL(1)), "rk-source")
	// A valid form beside a broken one: every form present must decode.
	p.forged("valid message-id, partial v1", id(nodeA(pay, 11)), map[string]nodeHeader{"rk-stream": nodeS(pay)}, "missing")
	p.forged("broken message-id, valid rk-stamp", "rk2:"+nodeSrcA+":"+ea+":"+pay+":011", stampH(nodeS(id(nodeA(pay, 11)))), "")
	p.forged("valid rk-stamp, broken v1", "order-f9", nodeMerge(stampH(nodeS(id(nodeA(pay, 11)))), with("rk-seq", nodeS("11"))), "rk-seq")
	return p
}

// nodeSeen is what the handler saw of one applied message.
type nodeSeen struct {
	stamped   bool
	stamp     protocol.Stamp
	messageID string
	rkStamp   any
	epochH    any
	seqH      any
	body      string
}

func testNodePublish(t *testing.T, node string) {
	url := testbroker.SharedURL(t)
	queue := testbroker.Name(t, "node-interop")
	parking := queue + ".parked" // consumer.Config's default ParkingQueue
	testbroker.DeleteQueues(t, url, queue, parking)
	topo := topology.Topology{Queues: []topology.Queue{{Name: queue}, {Name: parking}}}

	conn, err := amqp.DialConfig(url, amqp.Config{Dial: amqp.DefaultDial(5 * time.Second)})
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		t.Fatalf("channel: %v", err)
	}
	// The same declarations the consumer makes, so that its own declare agrees.
	if err := topo.Declare(ch); err != nil {
		t.Fatalf("declare: %v", err)
	}
	queueDepth := func(name string) int {
		t.Helper()
		c, err := conn.Channel()
		if err != nil {
			t.Fatalf("channel: %v", err)
		}
		defer c.Close()
		q, err := c.QueueDeclarePassive(name, true, false, false, false, nil)
		if err != nil {
			t.Fatalf("inspect %s: %v", name, err)
		}
		return q.Messages
	}

	plan := buildNodePlan()
	var want struct{ applied, duplicates, parked, unstamped, legacy int }
	for _, e := range plan.expect {
		switch e.outcome {
		case nodeApplied:
			want.applied++
		case nodeDuplicate:
			want.duplicates++
		case nodeParked:
			want.parked++
		case nodeUnstamped:
			want.unstamped++
		}
		if e.v1only {
			want.legacy++
		}
	}
	t.Logf("plan: %d messages: %d stamps to apply, %d duplicates, %d to park, %d unstamped", len(plan.items),
		want.applied, want.duplicates, want.parked, want.unstamped)

	// Node publishes the plan and says what it sent.
	dir := t.TempDir()
	planPath := filepath.Join(dir, "plan.json")
	raw, err := json.MarshalIndent(map[string]any{"items": plan.items}, "", " ")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(planPath, raw, 0o600); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, node, "publish.js", "publish", url, queue, planPath)
	cmd.Dir = nodeInteropDir
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("node publish.js publish: %v\nstdout:\n%s\nstderr:\n%s", err, out, stderr.Bytes())
	}
	checkNodeSent(t, plan, out)
	if n := queueDepth(queue); n != len(plan.items) {
		t.Fatalf("queue holds %d messages after node published %d", n, len(plan.items))
	}

	// The Go consumer reads them.
	var (
		mu       sync.Mutex
		calls    = map[string]int{} // handler calls per effect key (none fails, so 1 each)
		seen     = map[string]nodeSeen{}
		parked   []consumer.Parked
		gaps     []dedup.Event
		others   []dedup.Event // late arrivals and epoch events: none expected
		conflict []consumer.Conflict
	)
	mem := &metrics.Memory{}
	logger := slog.New(slog.NewTextHandler(io.Discard, nil))
	if os.Getenv("RABBITKIT_TEST_LOG") != "" {
		logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	const gapGrace = 300 * time.Millisecond
	cfg := consumer.Config{
		URLs:      []string{url},
		Queue:     queue,
		Topology:  topo,
		StorePath: filepath.Join(dir, "consumer.db"),
		Logger:    logger,
		Metrics:   mem,
		// Short enough to see the deliberate gap reported within the test (default 30s).
		Dedup:      dedup.Config{GapGrace: gapGrace},
		OnParked:   func(p consumer.Parked) { mu.Lock(); parked = append(parked, p); mu.Unlock() },
		OnGap:      func(ev dedup.Event) { mu.Lock(); gaps = append(gaps, ev); mu.Unlock() },
		OnLate:     func(ev dedup.Event) { mu.Lock(); others = append(others, ev); mu.Unlock() },
		OnEpoch:    func(ev dedup.Event) { mu.Lock(); others = append(others, ev); mu.Unlock() },
		OnConflict: func(c consumer.Conflict) { mu.Lock(); conflict = append(conflict, c); mu.Unlock() },
	}
	c, err := consumer.New(cfg)
	if err != nil {
		t.Fatalf("consumer.New: %v", err)
	}
	defer c.Close(context.Background())
	effectsB, orderB := []byte("effects"), []byte("order")
	handler := func(_ context.Context, tx *bolt.Tx, m *consumer.Message) error {
		k := "unstamped/" + string(m.Body)
		if m.Stamped {
			k = m.Stamp.String()
		}
		mu.Lock()
		calls[k]++
		seen[k] = nodeSeen{stamped: m.Stamped, stamp: m.Stamp, messageID: m.Properties.MessageID, rkStamp: m.Headers[protocol.HeaderStamp],
			epochH: m.Headers[protocol.HeaderEpoch], seqH: m.Headers[protocol.HeaderSeq], body: string(m.Body)}
		mu.Unlock()
		eb, err := tx.CreateBucketIfNotExists(effectsB)
		if err != nil {
			return err
		}
		var n uint64
		if v := eb.Get([]byte(k)); v != nil {
			n = binary.BigEndian.Uint64(v)
		}
		if err := eb.Put([]byte(k), binary.BigEndian.AppendUint64(nil, n+1)); err != nil {
			return err
		}
		if !m.Stamped {
			return nil
		}
		ob, err := tx.CreateBucketIfNotExists(orderB)
		if err != nil {
			return err
		}
		i, _ := ob.NextSequence()
		v, err := json.Marshal(m.Stamp)
		if err != nil {
			return err
		}
		return ob.Put(binary.BigEndian.AppendUint64(nil, i), v)
	}
	runCtx, stop := context.WithCancel(context.Background())
	defer stop()
	done := make(chan struct{})
	var runErr error
	started := time.Now()
	go func() { defer close(done); runErr = c.RunTx(runCtx, handler) }()
	stopRun := func() {
		t.Helper()
		stop()
		select {
		case <-done:
			if runErr != nil {
				t.Fatalf("RunTx: %v", runErr)
			}
		case <-time.After(time.Minute):
			t.Fatal("RunTx did not return after its context ended")
		}
	}
	defer func() {
		stop()
		select {
		case <-done:
		case <-time.After(time.Minute):
		}
	}()

	readEffects := func() map[string]uint64 {
		out := map[string]uint64{}
		if err := c.View(context.Background(), func(tx *bolt.Tx) error {
			b := tx.Bucket(effectsB)
			if b == nil {
				return nil
			}
			return b.ForEach(func(k, v []byte) error { out[string(k)] = binary.BigEndian.Uint64(v); return nil })
		}); err != nil {
			t.Fatalf("read effects: %v", err)
		}
		return out
	}
	progress := func() string {
		mu.Lock()
		defer mu.Unlock()
		return fmt.Sprintf("effects %d/%d, duplicates %v/%d, parked %d/%d, handled %v, unstamped %v, queue %d",
			len(readEffects()), want.applied+want.unstamped, mem.Get(consumer.MetricDuplicates), want.duplicates,
			len(parked), want.parked, mem.Get(consumer.MetricHandled), mem.Get(consumer.MetricUnstamped), queueDepth(queue))
	}
	// waitFor polls cond until it holds or timeout passes, and reports whether it held.
	waitFor := func(timeout time.Duration, cond func() bool) bool {
		deadline := time.Now().Add(timeout)
		for !cond() {
			if time.Now().After(deadline) {
				return false
			}
			time.Sleep(50 * time.Millisecond)
		}
		return true
	}
	// Every delivery has an outcome (whether the right one is checked below).
	if !waitFor(time.Minute, func() bool {
		var n uint64
		for _, v := range readEffects() {
			n += v
		}
		mu.Lock()
		np := len(parked)
		mu.Unlock()
		return int(n)+np+int(mem.Get(consumer.MetricDuplicates)) >= len(plan.items)
	}) {
		t.Fatalf("timed out waiting for every message to be handled, dropped or parked: %s", progress())
	}
	t.Logf("all handled, dropped or parked after %v", time.Since(started).Round(time.Millisecond))
	// The deliberate gap: reported after its grace (checked below).
	waitFor(10*time.Second, func() bool { mu.Lock(); defer mu.Unlock(); return len(gaps) > 0 })
	time.Sleep(3 * gapGrace) // room for any other (wrong) gap report
	stopRun()
	t.Logf("consumer stopped after %v", time.Since(started).Round(time.Millisecond))

	// Every delivery was acked: nothing comes back once the consumer is gone.
	time.Sleep(200 * time.Millisecond)
	if n := queueDepth(queue); n != 0 {
		t.Errorf("%d messages left in %s after the consumer stopped: not acked", n, queue)
	}

	mu.Lock()
	defer mu.Unlock()
	effects := readEffects()

	// Exactly once, and only what the plan says.
	wantKeys := map[string]nodeExpect{}
	for i, e := range plan.expect {
		switch e.outcome {
		case nodeApplied:
			wantKeys[e.stamp.String()] = e
		case nodeUnstamped:
			wantKeys["unstamped/"+plan.items[i].Body] = e
		}
	}
	for k := range wantKeys {
		if effects[k] != 1 || calls[k] != 1 {
			t.Errorf("%s: applied %d times (handler called %d times), want exactly once", k, effects[k], calls[k])
		}
	}
	for k, n := range effects {
		if _, ok := wantKeys[k]; !ok {
			t.Errorf("%s applied %d times, want never (a parked or unknown message reached the handler)", k, n)
		}
	}

	// What the handler saw: the decoded stamp, the application's message-id, the stamp's headers.
	for k, e := range wantKeys {
		s, ok := seen[k]
		if !ok {
			continue // reported above
		}
		if e.outcome == nodeUnstamped {
			if s.stamped || s.messageID != e.msgID {
				t.Errorf("%s: handler saw stamped=%v message-id %q, want an unstamped message with message-id %q", k, s.stamped, s.messageID, e.msgID)
			}
			continue
		}
		if !s.stamped || s.stamp != e.stamp {
			t.Errorf("%s: handler saw stamped=%v %v", k, s.stamped, s.stamp)
		}
		if s.messageID != e.msgID {
			t.Errorf("%s (%s): handler saw message-id %q, want %q", k, e.form, s.messageID, e.msgID)
		}
		if s.body != nodeBody(e.stamp) {
			t.Errorf("%s: handler saw body %q", k, s.body)
		}
		switch e.form {
		case "v2":
			if s.rkStamp != nil || s.epochH != nil || s.seqH != nil {
				t.Errorf("%s (v2 in message-id): handler saw rk- headers %v %v %v, want none", k, s.rkStamp, s.epochH, s.seqH)
			}
		case "v2-header":
			if s.rkStamp != e.stamp.String() {
				t.Errorf("%s (v2-header): handler saw rk-stamp %#v, want %q", k, s.rkStamp, e.stamp.String())
			}
		case "v1":
			if e.stamp.Source != nodeSrcB {
				break // the raw ones with other integer types
			}
			// publish.js must send the numbers as AMQP 'l' (int64), exact beyond 2^53.
			if s.epochH != e.stamp.Epoch || s.seqH != e.stamp.Seq {
				t.Errorf("%s (v1): handler saw rk-epoch %#v (%T), rk-seq %#v (%T), want int64 %d and %d",
					k, s.epochH, s.epochH, s.seqH, s.seqH, e.stamp.Epoch, e.stamp.Seq)
			}
		}
	}

	// Per-stream order of application: the plan's order of first arrival.
	type streamKey struct {
		source, stream string
		epoch          int64
	}
	wantOrder := map[streamKey][]int64{}
	for _, e := range plan.expect {
		if e.outcome == nodeApplied {
			sk := streamKey{e.stamp.Source, e.stamp.Stream, e.stamp.Epoch}
			wantOrder[sk] = append(wantOrder[sk], e.stamp.Seq)
		}
	}
	gotOrder := map[streamKey][]int64{}
	if err := c.View(context.Background(), func(tx *bolt.Tx) error {
		b := tx.Bucket(orderB)
		if b == nil {
			return nil
		}
		return b.ForEach(func(_, v []byte) error {
			var s protocol.Stamp
			if err := json.Unmarshal(v, &s); err != nil {
				return err
			}
			sk := streamKey{s.Source, s.Stream, s.Epoch}
			gotOrder[sk] = append(gotOrder[sk], s.Seq)
			return nil
		})
	}); err != nil {
		t.Fatalf("read order: %v", err)
	}
	for sk, w := range wantOrder {
		if !slices.Equal(gotOrder[sk], w) {
			t.Errorf("stream %s/%s epoch %d applied in order %v, want %v", sk.source, sk.stream, sk.epoch, gotOrder[sk], w)
		}
	}
	if len(gotOrder) != len(wantOrder) {
		t.Errorf("applied streams %v, want %v", gotOrder, wantOrder)
	}

	// Parked: every forged one, with its reason, and nothing else.
	wantParked := map[string]nodeExpect{}
	for i, e := range plan.expect {
		if e.outcome == nodeParked {
			wantParked[plan.items[i].Body] = e
		}
	}
	copies := map[string]amqp.Delivery{}
	for {
		d, ok, err := ch.Get(parking, true)
		if err != nil {
			t.Fatalf("get %s: %v", parking, err)
		}
		if !ok {
			break
		}
		if _, dup := copies[string(d.Body)]; dup {
			t.Errorf("parked twice: %q", d.Body)
		}
		copies[string(d.Body)] = d
	}
	for i, item := range plan.items {
		e := plan.expect[i]
		if e.outcome != nodeParked {
			continue
		}
		d, ok := copies[item.Body]
		if !ok {
			t.Errorf("%q (message-id %q, headers %v) was not parked", item.Body, item.MessageID, item.Headers)
			continue
		}
		reason, _ := d.Headers[protocol.HeaderParkReason].(string)
		if !e.stamped && !strings.Contains(reason, "malformed") || !strings.Contains(reason, e.reason) {
			t.Errorf("%q parked with reason %q, want it to name %q", item.Body, reason, cmp.Or(e.reason, "malformed"))
		}
		if q, _ := d.Headers[protocol.HeaderParkQueue].(string); q != queue {
			t.Errorf("%q: %s = %q, want %q", item.Body, protocol.HeaderParkQueue, q, queue)
		}
		wantID := item.MessageID
		if item.Form == "v2" {
			wantID = e.stamp.String()
		}
		if d.MessageId != wantID {
			t.Errorf("%q: parked copy has message-id %q, want the original %q", item.Body, d.MessageId, wantID)
		}
		for k := range item.Headers {
			if _, ok := d.Headers[k]; !ok {
				t.Errorf("%q: parked copy lost header %s", item.Body, k)
			}
		}
	}
	for body := range copies {
		if _, ok := wantParked[body]; !ok {
			t.Errorf("parked, but should not be: %q", body)
		}
	}
	if len(parked) != want.parked {
		t.Errorf("OnParked called %d times, want %d", len(parked), want.parked)
	}
	for _, p := range parked {
		if p.Accounted {
			t.Errorf("parked %v (%q) as accounted: a malformed or suspicious stamp must not change dedup state", p.Stamp, p.Reason)
		}
		if p.Stamped && (p.Stamp.Seq != 1<<62 || !strings.Contains(p.Reason, "suspicious")) {
			t.Errorf("OnParked: stamped %v with reason %q; only the 2^62 jump carries a valid stamp", p.Stamp, p.Reason)
		}
	}

	// Only the deliberate gap, gappy seq 3; nothing late, no epoch events, no conflicts.
	wantGap := dedup.Event{Kind: dedup.EventGapDetected, Key: dedup.Key{Source: nodeSrcA, Stream: "gappy"}, Epoch: nodeEpochA, From: 3, To: 3}
	if len(gaps) != 1 || gaps[0].Kind != wantGap.Kind || gaps[0].Key != wantGap.Key || gaps[0].Epoch != wantGap.Epoch ||
		gaps[0].From != wantGap.From || gaps[0].To != wantGap.To {
		t.Errorf("gap reports %v, want exactly [%v]", gaps, wantGap)
	}
	if len(others) > 0 {
		t.Errorf("unexpected events %v", others)
	}
	if len(conflict) > 0 {
		t.Errorf("unexpected conflicts %v", conflict)
	}

	// The consumer's own counts agree.
	for _, m := range []struct {
		name string
		want int
	}{
		{consumer.MetricHandled, want.applied}, // stamped ones: unstamped messages have no mark
		{consumer.MetricDuplicates, want.duplicates},
		{consumer.MetricParked, want.parked},
		{consumer.MetricUnstamped, want.unstamped},
		{consumer.MetricLegacyStamps, want.legacy},
		{consumer.MetricConflicts, 0},
		{consumer.MetricGaps, 1},
	} {
		if got := mem.Get(m.name); got != float64(m.want) {
			t.Errorf("%s = %v, want %d", m.name, got, m.want)
		}
	}
}

// checkNodeSent compares what publish.js reports it sent (one JSON line per item) with the plan
// and with Go's encoding of the same stamps: two implementations of the spec must agree.
func checkNodeSent(t *testing.T, plan *nodePlan, out []byte) {
	t.Helper()
	type sent struct {
		Index     int     `json:"index"`
		MessageID *string `json:"message_id"`
		RKStamp   *string `json:"rk_stamp"`
	}
	var got []sent
	var summary string
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, "{") {
			summary = line
			continue
		}
		var s sent
		if err := json.Unmarshal([]byte(line), &s); err != nil {
			t.Fatalf("publish.js printed %q: %v", line, err)
		}
		got = append(got, s)
	}
	if !strings.Contains(summary, "all confirmed") {
		t.Fatalf("publish.js summary %q, want all confirmed\n%s", summary, out)
	}
	if len(got) != len(plan.items) {
		t.Fatalf("publish.js reported %d messages, the plan has %d", len(got), len(plan.items))
	}
	str := func(p *string) string {
		if p == nil {
			return "(none)"
		}
		return *p
	}
	for i, s := range got {
		item, e := plan.items[i], plan.expect[i]
		if s.Index != i {
			t.Fatalf("publish.js reported item %d as #%d", i, s.Index)
		}
		if item.Form == "raw" {
			if str(s.MessageID) != cmp.Or(item.MessageID, "(none)") {
				t.Errorf("item %d (raw): sent message-id %q, want %q", i, str(s.MessageID), item.MessageID)
			}
			continue
		}
		wire := e.stamp.String() // Go's encoding
		if str(s.RKStamp) != wire {
			t.Errorf("item %d (%s): node encoded %q, Go encodes %q", i, item.Form, str(s.RKStamp), wire)
		}
		wantID := map[string]string{"v2": wire, "v2-header": item.MessageID, "v1": "(none)"}[item.Form]
		if str(s.MessageID) != wantID {
			t.Errorf("item %d (%s): sent message-id %q, want %q", i, item.Form, str(s.MessageID), wantID)
		}
	}
}
