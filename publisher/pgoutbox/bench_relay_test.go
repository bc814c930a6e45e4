package pgoutbox_test

import (
	"context"
	"crypto/rand"
	"flag"
	"fmt"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/rabbitkit/rabbitkit/internal/testbroker"
	"github.com/rabbitkit/rabbitkit/internal/testutil"
	"github.com/rabbitkit/rabbitkit/protocol"
	"github.com/rabbitkit/rabbitkit/publisher"
	"github.com/rabbitkit/rabbitkit/publisher/pgoutbox"
)

// go test -run '^$' -bench BenchmarkRelay -benchtime 20000x -count 3 ./publisher/pgoutbox/
//
// The relay's throughput against raw amqp091-go pipelined confirms of the same messages, in the
// same run: n persistent 256 B messages (mandatory, window 512) into a classic queue of the shared
// broker. "relay": n rows over 16 streams committed in one transaction while the relay idles
// (connected, holding the lease); timed from that COMMIT until the broker confirmed the last one.
// "raw": one amqp091-go channel in confirm mode, at most 512 unconfirmed, a UUID-like message-id;
// "raw_stamped": the same with the v2 stamp as message-id (the bytes the relay sends). Each round
// runs the three in a rotating order, each into a purged queue (-pgoutbox.rounds, default 4).
// ratio = relay / raw over all rounds; round_ratio_* are of each round's own ratio.

const relayWindow = 512

// rawPipelined publishes n persistent messages to queue with at most window unconfirmed and waits
// for every confirm; msg/s. stamped: the v2 stamp as message-id, else a UUID-like one.
func rawPipelined(b testing.TB, url, queue string, body []byte, n, window int, stamped bool) float64 {
	b.Helper()
	var prefix [6]byte
	_, _ = rand.Read(prefix[:])
	return testbroker.PublishPipelined(b, url, queue, n, window, func(i int) amqp.Publishing {
		id := fmt.Sprintf("%x-%04x-4000-8000-%012x", prefix[:4], prefix[4:], i)
		if stamped {
			id = protocol.Stamp{Source: "orders-svc", Epoch: 1, Stream: fmt.Sprintf("s%d", i%16), Seq: int64(i/16 + 1)}.String()
		}
		return amqp.Publishing{MessageId: id, Body: body}
	})
}

func purgeQueue(b testing.TB, url, queue string) {
	b.Helper()
	c, err := amqp.Dial(url)
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	ch, err := c.Channel()
	if err != nil {
		b.Fatal(err)
	}
	if _, err := ch.QueueDeclare(queue, true, false, false, false, nil); err != nil {
		b.Fatal(err)
	}
	if _, err := ch.QueuePurge(queue, false); err != nil {
		b.Fatal(err)
	}
}

// fillOutbox commits n messages of body over streams streams in one transaction.
func fillOutbox(b testing.TB, e *env, o *pgoutbox.Outbox, n, streams int, body []byte) {
	b.Helper()
	ctx := context.Background()
	msgs := make([]publisher.Message, n)
	for i := range msgs {
		msgs[i] = publisher.Message{RoutingKey: e.queue, Stream: fmt.Sprintf("s%d", i%streams), Body: body}
	}
	tx, err := e.pool.Begin(ctx)
	if err != nil {
		b.Fatal(err)
	}
	defer func() { _ = tx.Rollback(ctx) }()
	if _, err := o.PublishBatchTx(ctx, tx, msgs); err != nil {
		b.Fatal(err)
	}
	if err := tx.Commit(ctx); err != nil {
		b.Fatal(err)
	}
}

// waitConfirmed waits until m counted n more confirms than base; it returns when it saw them.
func waitConfirmed(b testing.TB, m *countingRecorder, base float64, n int, d time.Duration) time.Time {
	b.Helper()
	deadline := time.Now().Add(d)
	for {
		if m.get(publisher.MetricConfirmed)-base >= float64(n) {
			return time.Now()
		}
		if time.Now().After(deadline) {
			b.Fatalf("%v of %d confirmed after %v", m.get(publisher.MetricConfirmed)-base, n, d)
		}
		time.Sleep(time.Millisecond)
	}
}

var relayRounds = flag.Int("pgoutbox.rounds", 4, "BenchmarkRelay: rounds of relay / raw / raw stamped, in rotating order")

func BenchmarkRelay(b *testing.B) {
	n := max(b.N, 1000)
	e := benchEnv(b)
	qRaw := e.queue + "-raw"
	purgeQueue(b, e.url, qRaw)
	b.Cleanup(func() { purgeQueue(b, e.url, qRaw) })
	o := open(b, e.pool, pgoutbox.Options{PollInterval: 10 * time.Millisecond})
	m := &countingRecorder{}
	cfg := e.relayConfig(b, m)
	cfg.MaxInFlight = relayWindow
	runRelay(b, o, cfg)
	for deadline := time.Now().Add(10 * time.Second); !o.Relaying(); time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			b.Fatal("the relay did not take the lease")
		}
	}
	// Warm up: the relay's connection, channel and topology.
	fillOutbox(b, e, o, 100, 16, body256)
	waitConfirmed(b, m, 0, 100, 30*time.Second)

	rounds := max(*relayRounds, 1)
	per := n / rounds
	var relayD, rawD, stampedD time.Duration
	var relayR, rawR, stampedR []float64
	b.ResetTimer()
	for r := range rounds {
		phases := []func(){
			func() {
				b.StopTimer()
				purgeQueue(b, e.url, e.queue)
				base := m.get(publisher.MetricConfirmed)
				b.StartTimer()
				fillOutbox(b, e, o, per, 16, body256)
				c := time.Now() // COMMIT returned: the rows are visible
				end := waitConfirmed(b, m, base, per, 5*time.Minute)
				relayD += end.Sub(c)
				relayR = append(relayR, float64(per)/end.Sub(c).Seconds())
			},
			func() {
				b.StopTimer()
				purgeQueue(b, e.url, qRaw)
				b.StartTimer()
				rate := rawPipelined(b, e.url, qRaw, body256, per, relayWindow, false)
				rawD += time.Duration(float64(per) / rate * float64(time.Second))
				rawR = append(rawR, rate)
			},
			func() {
				b.StopTimer()
				purgeQueue(b, e.url, qRaw)
				b.StartTimer()
				rate := rawPipelined(b, e.url, qRaw, body256, per, relayWindow, true)
				stampedD += time.Duration(float64(per) / rate * float64(time.Second))
				stampedR = append(stampedR, rate)
			},
		}
		for i := range phases {
			phases[(i+r)%len(phases)]()
		}
	}
	b.StopTimer()
	total := float64(per * rounds)
	relay, raw, stamped := total/relayD.Seconds(), total/rawD.Seconds(), total/stampedD.Seconds()
	b.ReportMetric(relay, "relay_msg/s")
	b.ReportMetric(raw, "raw_msg/s")
	b.ReportMetric(stamped, "raw_stamped_msg/s")
	b.ReportMetric(relay/raw, "ratio")
	b.ReportMetric(relay/stamped, "ratio_stamped")
	// "ratio" is of the rates over all rounds; these are of each round's own ratio.
	lo, med, hi := testutil.RoundRatios(relayR, rawR)
	b.ReportMetric(med, "round_ratio_median")
	b.ReportMetric(lo, "round_ratio_min")
	b.ReportMetric(hi, "round_ratio_max")
	b.Logf("rounds: relay %.0f, raw %.0f, raw stamped %.0f msg/s", relayR, rawR, stampedR)
}
