package publisher

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
	"go.uber.org/goleak"

	"github.com/rabbitkit/rabbitkit/internal/testbroker"
	"github.com/rabbitkit/rabbitkit/internal/testutil"
	"github.com/rabbitkit/rabbitkit/journal"
	"github.com/rabbitkit/rabbitkit/protocol"
	"github.com/rabbitkit/rabbitkit/topology"
)

func TestMain(m *testing.M) {
	if os.Getenv(childEnv) != "" {
		os.Exit(childMain())
	}
	goleak.VerifyTestMain(m, testbroker.IgnoreProxyLeaks()...)
}

// testLogger logs to the test output when -v and RABBITKIT_TEST_LOG=1, else discards.
func testLogger(t testing.TB) *slog.Logger {
	if os.Getenv("RABBITKIT_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug})).With("test", t.Name())
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

// setup is a queue bound to a fresh exchange on the broker at url, with the topology a publisher
// declares.
type setup struct {
	url      string // where the checker consumes (the broker itself, never the proxy)
	exchange string
	queue    string
	key      string
	topo     topology.Topology
}

func newSetup(t *testing.T, url string, queueType string, queueArgs amqp.Table) setup {
	t.Helper()
	s := setup{url: url, exchange: testbroker.Name(t, "x"), queue: testbroker.Name(t, "q"), key: "k"}
	s.topo = topology.Topology{
		Exchanges: []topology.Exchange{{Name: s.exchange, Kind: "direct"}},
		Queues:    []topology.Queue{{Name: s.queue, Type: queueType, Args: queueArgs}},
		Bindings:  []topology.Binding{{Queue: s.queue, Exchange: s.exchange, Key: s.key}},
	}
	testbroker.DeleteQueues(t, url, s.queue)
	testbroker.DeleteExchanges(t, url, s.exchange)
	return s
}

// config returns a publisher config for the setup through brokerURL (maybe a proxy), with a journal
// in dir and short timings.
func (s setup) config(t *testing.T, brokerURL, dir string) Config {
	return Config{
		URLs:             []string{brokerURL},
		Source:           "test-" + t.Name(),
		JournalPath:      filepath.Join(dir, "journal.db"),
		Topology:         s.topo,
		Logger:           testLogger(t),
		Heartbeat:        time.Second,
		ReconnectBackoff: testutil.FastBackoff,
		RetryBackoff:     testutil.FastBackoff,
		MaxAttempts:      1000,
	}
}

// ledger records the stamps of accepted messages.
type ledger struct {
	mu       sync.Mutex
	accepted map[string][]int64 // stream -> seqs
	epoch    map[string]int64
	n        int
}

func newLedger() *ledger {
	return &ledger{accepted: map[string][]int64{}, epoch: map[string]int64{}}
}

func (l *ledger) add(st protocol.Stamp) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.accepted[st.Stream] = append(l.accepted[st.Stream], st.Seq)
	l.epoch[st.Stream] = st.Epoch
	l.n++
}

func (l *ledger) count() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.n
}

type checkOpts struct {
	unordered bool          // nacked windows may reorder first arrivals (x-overflow reject-publish)
	timeout   time.Duration // default 60s
	skip      map[string]map[int64]bool
	// allowExtra accepts arrivals that are not in the ledger (journaled by a process killed before it
	// could report them); they still take part in the order check.
	allowExtra bool
}

type checkResult struct {
	arrivals, dups int
}

// check consumes queue at url until every accepted message has arrived (or the timeout), and fails
// the test unless: every accepted message arrived at least once, nothing arrived that was not
// accepted, and first arrivals of every stream are in increasing seq order. It runs on the test
// goroutine.
func check(t *testing.T, url, queue string, l *ledger, o checkOpts) checkResult {
	t.Helper()
	if o.timeout == 0 {
		o.timeout = 60 * time.Second
	}
	l.mu.Lock()
	want := map[string]map[int64]bool{}
	missing := 0
	for stream, seqs := range l.accepted {
		want[stream] = map[int64]bool{}
		for _, q := range seqs {
			if o.skip[stream][q] {
				continue
			}
			if want[stream][q] {
				t.Errorf("seq %d of stream %s accepted twice", q, stream)
			}
			want[stream][q] = true
			missing++
		}
	}
	l.mu.Unlock()
	conn, err := amqp.Dial(url)
	if err != nil {
		t.Fatalf("check: dial: %v", err)
	}
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		t.Fatalf("check: channel: %v", err)
	}
	if err := ch.Qos(1000, 0, false); err != nil {
		t.Fatalf("check: qos: %v", err)
	}
	deliveries, err := ch.Consume(queue, "", true, false, false, false, nil)
	if err != nil {
		t.Fatalf("check: consume: %v", err)
	}
	seen := map[string]map[int64]bool{}
	lastFirst := map[string]int64{}
	var res checkResult
	deadline := time.NewTimer(o.timeout)
	defer deadline.Stop()
	for missing > 0 {
		select {
		case d, ok := <-deliveries:
			if !ok {
				t.Fatalf("check: consumer channel closed with %d messages missing", missing)
			}
			res.arrivals++
			st, v, err := protocol.Decode(d.MessageId, d.Headers)
			if err != nil {
				t.Fatalf("check: delivery without a valid stamp: %v", err)
			}
			if v != protocol.V2 {
				t.Errorf("check: delivery %s stamped in version %d", st, v)
			}
			if _, inHeader := d.Headers[protocol.HeaderStamp]; inHeader == protocol.LooksLikeStamp(d.MessageId) {
				t.Errorf("check: delivery %s: the stamp must be in exactly one of message-id (%q) and rk-stamp", st, d.MessageId)
			}
			if !want[st.Stream][st.Seq] && !o.skip[st.Stream][st.Seq] && !o.allowExtra {
				t.Errorf("check: %s arrived but was never accepted", st)
				continue
			}
			if seen[st.Stream] == nil {
				seen[st.Stream] = map[int64]bool{}
			}
			if seen[st.Stream][st.Seq] {
				res.dups++
				continue
			}
			seen[st.Stream][st.Seq] = true
			if !o.unordered && st.Seq < lastFirst[st.Stream] {
				t.Errorf("check: first arrival of %s after seq %d: out of order", st, lastFirst[st.Stream])
			}
			lastFirst[st.Stream] = max(lastFirst[st.Stream], st.Seq)
			if want[st.Stream][st.Seq] {
				missing--
			}
		case <-deadline.C:
			var lost []string
			for stream, seqs := range want {
				var ls []int64
				for q := range seqs {
					if !seen[stream][q] {
						ls = append(ls, q)
					}
				}
				sort.Slice(ls, func(i, j int) bool { return ls[i] < ls[j] })
				if len(ls) > 10 {
					ls = ls[:10]
				}
				if len(ls) > 0 {
					lost = append(lost, fmt.Sprintf("%s: %v", stream, ls))
				}
			}
			t.Fatalf("check: %d accepted messages never arrived within %v (first missing: %v)", missing, o.timeout, lost)
		}
	}
	// Anything left in the queue must be a duplicate.
	quiet := time.NewTimer(300 * time.Millisecond)
	defer quiet.Stop()
	for {
		select {
		case d := <-deliveries:
			res.arrivals++
			st, _, err := protocol.Decode(d.MessageId, d.Headers)
			if err != nil || (!want[st.Stream][st.Seq] && !o.skip[st.Stream][st.Seq] && !o.allowExtra) {
				t.Errorf("check: unexpected delivery %v after all arrived (%v)", st, err)
			}
			res.dups++
		case <-quiet.C:
			t.Logf("check: %d accepted, %d arrivals, %d duplicates", l.count(), res.arrivals, res.dups)
			return res
		}
	}
}

// mustNew creates a publisher and closes it at the end of the test.
func mustNew(t *testing.T, cfg Config) *Publisher {
	t.Helper()
	p, err := New(cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = p.Close(ctx)
	})
	return p
}

func flush(t *testing.T, p *Publisher, d time.Duration) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	if err := p.Flush(ctx); err != nil {
		t.Fatalf("Flush: %v (stats %+v)", err, p.Stats())
	}
}

func openJournal(t *testing.T, path, source string) *journal.Journal {
	t.Helper()
	j, err := journal.Open(path, journal.Options{Source: source})
	if err != nil {
		t.Fatalf("journal.Open: %v", err)
	}
	return j
}

// declare declares the setup's topology on url from the test.
func declare(t *testing.T, url string, s setup) {
	t.Helper()
	withCh(t, url, func(ch *amqp.Channel) {
		if err := s.topo.Declare(ch); err != nil {
			t.Fatal(err)
		}
	})
}

// purge empties queues (benchmarks: every phase starts from the same broker state).
func purge(t testing.TB, url string, queues ...string) {
	t.Helper()
	withCh(t, url, func(ch *amqp.Channel) {
		for _, q := range queues {
			if _, err := ch.QueuePurge(q, false); err != nil {
				t.Fatal(err)
			}
		}
	})
}
