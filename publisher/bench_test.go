package publisher

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"flag"
	"fmt"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/rabbitkit/rabbitkit/internal/testbroker"
	"github.com/rabbitkit/rabbitkit/internal/testutil"
	"github.com/rabbitkit/rabbitkit/protocol"
	"github.com/rabbitkit/rabbitkit/topology"
)

// Benchmarks measure rabbitkit against raw amqp091-go pipelined confirms with the same window, in
// the same run, and report the ratio. Run them with a fixed count, e.g.
//
//	go test -run '^$' -bench 'Publish' -benchtime 20000x ./publisher/
//
// (no -race). The broker shares the machine with the benchmark: numbers are relative.

const benchWindow = 512

func benchQueue(b *testing.B, url, qtype string) string {
	b.Helper()
	q := testbroker.Name(b, "bench")
	c, err := amqp.Dial(url)
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	ch, err := c.Channel()
	if err != nil {
		b.Fatal(err)
	}
	if err := (topology.Topology{Queues: []topology.Queue{{Name: q, Type: qtype}}}).Declare(ch); err != nil {
		b.Fatal(err)
	}
	testbroker.DeleteQueues(b, url, q)
	return q
}

// Stamp variants of rawPipelined: what the raw baseline puts in each message.
const (
	stampNone     = "plain"  // a short message-id, no headers
	stampUUID     = "uuid"   // a 36-byte UUID message-id: what a careful user who deduplicates sends
	stampV2       = "v2"     // the v2 stamp as message-id: the bytes rabbitkit sends ("stamped raw")
	stampV2Long   = "v2long" // a v2 stamp of 80-byte source and 130-byte stream: does length cost?
	stampV2Header = "v2hdr"  // a UUID message-id and the stamp in rk-stamp: the caller set a message-id
	stampV1       = "v1"     // contract v1: the four rk- headers and the old message-id
)

// uuidLike returns a 36-byte message-id shaped like a random UUID, unique per i.
func uuidLike(prefix [8]byte, i int) string {
	return fmt.Sprintf("%08x-%04x-4%03x-8%03x-%012x", binary.BigEndian.Uint32(prefix[:4]), binary.BigEndian.Uint16(prefix[4:6]),
		binary.BigEndian.Uint16(prefix[6:])&0xfff, i>>48&0xfff, i&(1<<48-1))
}

// rawPipelined publishes n persistent messages to queue with at most window unconfirmed, waiting for
// every confirm; it returns the rate in msg/s. stamp is one of the stamp variants.
func rawPipelined(b *testing.B, url, queue string, body []byte, n, window int, stamp string) float64 {
	b.Helper()
	var prefix [8]byte
	_, _ = rand.Read(prefix[:])
	long := strings.Repeat("s", protocol.MaxSourceLen)
	longStream := strings.Repeat("t", protocol.MaxStreamLen)
	return testbroker.PublishPipelined(b, url, queue, n, window, func(i int) amqp.Publishing {
		msg := amqp.Publishing{Body: body, MessageId: fmt.Sprint(i)}
		st := protocol.Stamp{Source: "bench-raw", Epoch: 1234567890123, Stream: "/" + queue, Seq: int64(i + 1)}
		switch stamp {
		case stampUUID:
			msg.MessageId = uuidLike(prefix, i)
		case stampV2:
			msg.MessageId = st.String()
		case stampV2Long:
			st.Source, st.Stream = long, longStream
			msg.MessageId = st.String()
		case stampV2Header:
			msg.MessageId = uuidLike(prefix, i)
			msg.Headers = amqp.Table{protocol.HeaderStamp: st.String()}
		case stampV1:
			msg.Headers, msg.MessageId = st.ApplyV1(nil), st.Source+"/"+fmt.Sprint(st.Epoch)+"/"+st.Stream+"/"+fmt.Sprint(st.Seq)
		}
		return msg
	})
}

func benchPublisher(b *testing.B, url, queue, qtype string) *Publisher {
	b.Helper()
	p, err := New(Config{URLs: []string{url}, Source: "bench", JournalPath: filepath.Join(b.TempDir(), "j.db"),
		Logger: testLogger(b), MaxInFlight: benchWindow,
		Topology: topology.Topology{Queues: []topology.Queue{{Name: queue, Type: qtype}}}})
	if err != nil {
		b.Fatal(err)
	}
	// Wait until connected so that the measurement starts with a ready channel.
	deadline := time.Now().Add(10 * time.Second)
	for p.State() != StateReady && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	return p
}

func closeBench(b *testing.B, p *Publisher) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := p.Close(ctx); err != nil {
		b.Error(err)
	}
}

// rkMany publishes n messages from g goroutines calling Publish, then Flush; msg/s.
func rkMany(b *testing.B, p *Publisher, queue string, body []byte, n, g int) float64 {
	b.Helper()
	ctx := context.Background()
	var left atomic.Int64
	left.Store(int64(n))
	var wg sync.WaitGroup
	var failed atomic.Value
	start := time.Now()
	for range g {
		wg.Go(func() {
			for left.Add(-1) >= 0 {
				if _, err := p.Publish(ctx, Message{RoutingKey: queue, Body: body}); err != nil {
					failed.Store(err)
					return
				}
			}
		})
	}
	wg.Wait()
	if err := p.Flush(ctx); err != nil {
		b.Fatal(err)
	}
	if err, _ := failed.Load().(error); err != nil {
		b.Fatal(err)
	}
	return float64(n) / time.Since(start).Seconds()
}

// rkAsync publishes n messages from one goroutine with PublishAsync, then Flush; msg/s.
func rkAsync(b *testing.B, p *Publisher, queue string, body []byte, n int) float64 {
	b.Helper()
	ctx := context.Background()
	start := time.Now()
	var last *Receipt
	for range n {
		last = p.PublishAsync(ctx, Message{RoutingKey: queue, Body: body})
	}
	if err := last.WaitJournaled(ctx); err != nil {
		b.Fatal(err)
	}
	if err := p.Flush(ctx); err != nil {
		b.Fatal(err)
	}
	return float64(n) / time.Since(start).Seconds()
}

var benchRounds = flag.Int("rk.rounds", 2, "BenchmarkPublish: rounds of raw / stamped raw / rabbitkit, in rotating order")

// BenchmarkPublish: raw amqp091-go pipelined confirms (window 512) of messages with a UUID
// message-id (the baseline), the same with the v2 stamp as message-id ("stamped raw": the same wire
// bytes rabbitkit sends) and rabbitkit: Publish from 512 goroutines
// ("many": one message each in flight, like the raw window) or PublishAsync from one goroutine
// ("async"), same window, same run. Each round runs the three in a rotating order, each into a
// purged queue of its own. Beside msg/s it reports CPU µs per message of this process (client) and of
// the broker: on a shared 2-core machine CPU per message is the load-robust measure.
func BenchmarkPublish(b *testing.B) {
	url := testbroker.SharedURL(b)
	meter := newCPUMeter()
	for _, qtype := range []string{topology.Classic, topology.Quorum} {
		for _, size := range []int{256, 4096} {
			for _, form := range []string{"many", "async"} {
				b.Run(fmt.Sprintf("%s/%dB/%s", qtype, size, form), func(b *testing.B) {
					body := make([]byte, size)
					rounds := max(*benchRounds, 1)
					n := max(b.N, 1000) / rounds
					qRaw, qStamped, qRK := benchQueue(b, url, qtype), benchQueue(b, url, qtype), benchQueue(b, url, qtype)
					p := benchPublisher(b, url, qRK, qtype)
					defer closeBench(b, p)
					b.ResetTimer()
					var raw, stamped, rk cost
					var rawR, stampedR, rkR []float64 // each round's rates
					phases := []func(){
						func() {
							purge(b, url, qRaw)
							c := meter.measure(n, func() { rawPipelined(b, url, qRaw, body, n, benchWindow, stampUUID) })
							raw.add(c)
							rawR = append(rawR, c.rate())
						},
						func() {
							purge(b, url, qStamped)
							c := meter.measure(n, func() { rawPipelined(b, url, qStamped, body, n, benchWindow, stampV2) })
							stamped.add(c)
							stampedR = append(stampedR, c.rate())
						},
						func() {
							purge(b, url, qRK)
							c := meter.measure(n, func() {
								if form == "many" {
									rkMany(b, p, qRK, body, n, benchWindow)
								} else {
									rkAsync(b, p, qRK, body, n)
								}
							})
							rk.add(c)
							rkR = append(rkR, c.rate())
						},
					}
					for r := range rounds {
						for i := range phases {
							phases[(i+r)%len(phases)]()
						}
					}
					b.StopTimer()
					b.ReportMetric(raw.rate(), "raw_msg/s")
					b.ReportMetric(stamped.rate(), "raw_stamped_msg/s")
					b.ReportMetric(rk.rate(), "rk_msg/s")
					b.ReportMetric(rk.rate()/raw.rate(), "ratio")
					b.ReportMetric(rk.rate()/stamped.rate(), "ratio_stamped")
					// "ratio" is of the rates over all rounds; these are of each round's own ratio.
					lo, med, hi := testutil.RoundRatios(rkR, rawR)
					b.ReportMetric(med, "round_ratio_median")
					b.ReportMetric(lo, "round_ratio_min")
					b.ReportMetric(hi, "round_ratio_max")
					b.Logf("rounds: raw %.0f, stamped %.0f, rabbitkit %.0f msg/s", rawR, stampedR, rkR)
					b.ReportMetric(stamped.selfPerMsg(), "stamped_cpu_µs/msg")
					b.ReportMetric(rk.selfPerMsg(), "rk_cpu_µs/msg")
					if meter.brokerPID != 0 {
						b.ReportMetric(raw.brokerPerMsg(), "raw_broker_µs/msg")
						b.ReportMetric(stamped.brokerPerMsg(), "stamped_broker_µs/msg")
						b.ReportMetric(rk.brokerPerMsg(), "rk_broker_µs/msg")
					}
				})
			}
		}
	}
}

// BenchmarkJournaledLatency: Publish latency to "journaled" from 16 goroutines, with the broker up
// and during an outage (proxy down).
func BenchmarkJournaledLatency(b *testing.B) {
	url := testbroker.SharedURL(b)
	for _, outage := range []bool{false, true} {
		b.Run(map[bool]string{false: "broker-up", true: "outage"}[outage], func(b *testing.B) {
			px := testbroker.NewProxy(b, url)
			q := benchQueue(b, url, topology.Classic)
			p := benchPublisher(b, px.URL, q, topology.Classic)
			defer closeBench(b, p)
			if outage {
				px.Down(b)
			}
			n := max(b.N, 2000)
			lat := make([]time.Duration, n)
			var next atomic.Int64
			var wg sync.WaitGroup
			ctx := context.Background()
			body := make([]byte, 256)
			b.ResetTimer()
			for range 16 {
				wg.Go(func() {
					for {
						i := next.Add(1) - 1
						if i >= int64(n) {
							return
						}
						t0 := time.Now()
						if _, err := p.Publish(ctx, Message{RoutingKey: q, Body: body}); err != nil {
							b.Error(err)
							return
						}
						lat[i] = time.Since(t0)
					}
				})
			}
			wg.Wait()
			b.StopTimer()
			sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
			b.ReportMetric(float64(lat[n/2].Microseconds()), "p50_µs")
			b.ReportMetric(float64(lat[n*99/100].Microseconds()), "p99_µs")
			if outage {
				px.Up(b)
			}
		})
	}
}

// BenchmarkDrain: a backlog journaled while the broker was unreachable drains when a Publisher on the
// same journal reaches the broker; compared with raw pipelined confirms of the same count (a UUID
// message-id, and the v2 stamp) in the same run. No proxy on either path.
func BenchmarkDrain(b *testing.B) {
	url := testbroker.SharedURL(b)
	q := benchQueue(b, url, topology.Classic)
	qRaw := benchQueue(b, url, topology.Classic)
	path := filepath.Join(b.TempDir(), "j.db")
	cfg := Config{URLs: []string{"amqp://guest:guest@127.0.0.1:1/"}, Source: "bench", JournalPath: path,
		Logger: testLogger(b), MaxInFlight: benchWindow, Topology: topology.Topology{Queues: []topology.Queue{{Name: q}}}}
	offline, err := New(cfg) // the broker is unreachable for it
	if err != nil {
		b.Fatal(err)
	}
	n := max(b.N, 20000)
	body := make([]byte, 256)
	ctx := context.Background()
	msgs := make([]Message, 1000)
	for i := range msgs {
		msgs[i] = Message{RoutingKey: q, Body: body}
	}
	for done := 0; done < n; done += len(msgs) {
		if _, err := offline.PublishBatch(ctx, msgs); err != nil {
			b.Fatal(err)
		}
	}
	n = (n + len(msgs) - 1) / len(msgs) * len(msgs)
	closeBench(b, offline)
	b.ResetTimer()
	start := time.Now()
	cfg.URLs = []string{url}
	p, err := New(cfg)
	if err != nil {
		b.Fatal(err)
	}
	defer closeBench(b, p)
	if err := p.Flush(ctx); err != nil { // covers the backlog the offline Publisher left
		b.Fatal(err)
	}
	drain := float64(n) / time.Since(start).Seconds()
	raw := rawPipelined(b, url, qRaw, body, n, benchWindow, stampUUID)
	rawStamped := rawPipelined(b, url, qRaw, body, n, benchWindow, stampV2)
	b.StopTimer()
	b.ReportMetric(drain, "drain_msg/s")
	b.ReportMetric(raw, "raw_msg/s")
	b.ReportMetric(drain/raw, "ratio")
	b.ReportMetric(rawStamped, "raw_stamped_msg/s")
	b.ReportMetric(drain/rawStamped, "ratio_stamped")
}

// BenchmarkStampCost: what the wire contract costs the broker, with no rabbitkit code involved. Raw
// pipelined confirms (window 512, 256 B) of each stamp variant (a short message-id, a UUID, the v2
// stamp as message-id, a 235-byte v2 stamp, a UUID with the stamp in rk-stamp, and contract v1's
// four headers), in rotating order into a purged queue, reporting msg/s and broker CPU µs per
// message.
func BenchmarkStampCost(b *testing.B) {
	url := testbroker.SharedURL(b)
	meter := newCPUMeter()
	variants := []string{stampNone, stampUUID, stampV2, stampV2Long, stampV2Header, stampV1}
	for _, qtype := range []string{topology.Classic, topology.Quorum} {
		b.Run(qtype, func(b *testing.B) {
			q := benchQueue(b, url, qtype)
			body := make([]byte, 256)
			rounds := max(*benchRounds, 1)
			n := max(b.N, 1000) / rounds
			costs := make([]cost, len(variants))
			b.ResetTimer()
			for r := range rounds {
				for i := range variants {
					v := (i + r) % len(variants)
					purge(b, url, q)
					costs[v].add(meter.measure(n, func() { rawPipelined(b, url, q, body, n, benchWindow, variants[v]) }))
				}
			}
			b.StopTimer()
			for i, v := range variants {
				b.ReportMetric(costs[i].rate(), v+"_msg/s")
				if meter.brokerPID != 0 {
					b.ReportMetric(costs[i].brokerPerMsg(), v+"_broker_µs/msg")
				}
			}
		})
	}
}
