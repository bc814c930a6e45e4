package watermill_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"log/slog"
	"maps"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	wamqp "github.com/ThreeDotsLabs/watermill-amqp/v3/pkg/amqp"
	"github.com/ThreeDotsLabs/watermill/message"
	amqp "github.com/rabbitmq/amqp091-go"
	"go.uber.org/goleak"

	"github.com/rabbitkit/rabbitkit/protocol"
	"github.com/rabbitkit/rabbitkit/publisher"
	"github.com/rabbitkit/rabbitkit/topology"
)

// Every test closes what it opened (rabbitkit's publisher, watermill's router and subscriber, its
// own amqp091-go connections), so nothing may be left running afterwards, watermill included.
func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

const (
	defaultURL = "amqp://guest:guest@127.0.0.1:5672/"
	total      = 100 // messages published through rabbitkit
	appHeader  = "x-app-trace"
	// watermill-amqp v3.0.2 logs this when its marshaler refuses a delivery, then nacks it with
	// requeue (Config.Consume.NoRequeueOnNack is false by default).
	nackLogLine = "Processing message failed, sending nack"
)

// TestWatermillReceivesRabbitkitMessages publishes with rabbitkit and consumes with a watermill-amqp
// subscriber set up exactly as a new user would: NewDurableQueueConfig (topic = queue name, default
// exchange, DefaultMarshaler) and a Router with one consumer handler.
func TestWatermillReceivesRabbitkitMessages(t *testing.T) {
	u := brokerURL(t)

	t.Run("contract v2 reaches the handler unchanged", func(t *testing.T) {
		queue := newQueue(t, u, "v2")
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()

		// Publish through rabbitkit. The publisher declares the queue (durable, x-queue-type classic;
		// watermill then re-declares it durable without arguments, which RabbitMQ takes as the
		// same queue) and sends to it through the default exchange, with the queue name as the
		// routing key: watermill's topic.
		p, err := publisher.New(publisher.Config{
			URLs:        []string{u},
			Source:      "interop-watermill",
			JournalPath: filepath.Join(t.TempDir(), "journal.db"),
			Topology:    topology.Topology{Queues: []topology.Queue{{Name: queue}}},
			Logger:      slog.New(slog.DiscardHandler),
		})
		if err != nil {
			t.Fatalf("publisher.New: %v", err)
		}
		type sent struct {
			appID   string // the application's message-id, "" for the half without one
			trace   string // the application's header, with appID
			receipt *publisher.Receipt
		}
		sents := make(map[string]sent, total) // by body
		for i := range total {
			m := publisher.Message{RoutingKey: queue, Body: body(i)}
			if i%2 == 1 { // the application's own message-id and a string header of its own
				m.MessageID = fmt.Sprintf("order-%03d", i)
				m.Headers = amqp.Table{appHeader: fmt.Sprintf("trace-%03d", i)}
			}
			r, err := p.Publish(ctx, m)
			if err != nil {
				_ = p.Close(ctx)
				t.Fatalf("Publish %d: %v", i, err)
			}
			trace, _ := m.Headers[appHeader].(string)
			sents[string(m.Body)] = sent{appID: m.MessageID, trace: trace, receipt: r}
		}
		for _, s := range sents {
			if err := s.receipt.Wait(ctx); err != nil {
				_ = p.Close(ctx)
				t.Fatalf("message %s: no positive broker confirm: %v", s.receipt.Stamp(), err)
			}
		}
		if err := p.Close(ctx); err != nil {
			t.Fatalf("publisher Close: %v", err)
		}

		// Consume with watermill.
		type got struct {
			uuid     string
			metadata map[string]string
			n        int  // deliveries that reached the handler
			redeliv  bool // watermill-amqp marks a delivery with the AMQP redelivered flag
			acked    bool
			unknown  bool // a body rabbitkit did not send
		}
		var (
			mu       sync.Mutex
			gots     = make(map[string]*got, total)
			distinct int
			allIn    = make(chan struct{})
		)
		log := &errorLog{}
		stop := startWatermill(t, u, queue, log, func(msg *message.Message) error {
			mu.Lock()
			defer mu.Unlock()
			g := gots[string(msg.Payload)]
			if g == nil {
				_, known := sents[string(msg.Payload)]
				g = &got{uuid: msg.UUID, metadata: maps.Clone(map[string]string(msg.Metadata)), unknown: !known}
				gots[string(msg.Payload)] = g
				if known {
					if distinct++; distinct == total {
						close(allIn)
					}
				}
			}
			g.n++
			g.redeliv = g.redeliv || wamqp.IsMessageRedelivered(msg)
			// The router would ack a handler that returns nil as well; Ack is idempotent.
			g.acked = msg.Ack()
			return nil
		})
		select {
		case <-allIn:
		case <-time.After(30 * time.Second):
			stop()
			mu.Lock()
			n := distinct
			mu.Unlock()
			nacks, first := log.nacks()
			t.Fatalf("only %d of %d rabbitkit messages reached watermill's handler within 30 s; "+
				"watermill's marshaler refused %d deliveries (nacked and requeued), first: %v; other errors it logged: %q",
				n, total, nacks, first, log.others())
		}
		// A redelivery or a duplicate would come right behind the last message: give it a moment.
		time.Sleep(time.Second)
		stop()

		mu.Lock()
		defer mu.Unlock()
		for b, g := range gots {
			if g.unknown {
				t.Errorf("watermill delivered a body that rabbitkit did not send: %q", b)
			}
		}
		for b, s := range sents {
			g := gots[b]
			st := s.receipt.Stamp()
			switch {
			case g == nil:
				t.Errorf("%s: never reached the handler", st)
				continue
			case g.n != 1 || g.redeliv:
				t.Errorf("%s: reached the handler %d times (redelivered flag %v), want once, first delivery", st, g.n, g.redeliv)
			case !g.acked:
				t.Errorf("%s: msg.Ack() returned false", st)
			}
			// DefaultMarshaler takes the watermill UUID from its own header, _watermill_message_uuid,
			// which a rabbitkit message does not carry: the UUID is empty. It does not read the AMQP
			// message-id at all, so neither the application's message-id nor the v2 stamp that
			// rabbitkit puts in message-id is visible to a watermill handler (a custom Marshaler
			// could read amqp.Delivery.MessageId).
			if g.uuid != "" {
				t.Errorf("%s: watermill UUID %q, want empty (no %s header was sent)", st, g.uuid, wamqp.DefaultMessageUUIDHeaderKey)
			}
			// Every AMQP header becomes metadata, and must be a string or the message is refused.
			want := map[string]string{}
			if s.appID != "" {
				// The application set its message-id, so the stamp travels in the one string header
				// rk-stamp (contract v2), beside the application's own header.
				want[appHeader] = s.trace
				if stamp, ok := g.metadata[protocol.HeaderStamp]; ok {
					want[protocol.HeaderStamp] = stamp
					if dec, err := protocol.ParseMessageID(stamp); err != nil || dec != st {
						t.Errorf("%s: rk-stamp %q decodes to %+v, %v; want the receipt's stamp", st, stamp, dec, err)
					}
				} else {
					t.Errorf("%s: with an application message-id, want the stamp in metadata %q; got %v", st, protocol.HeaderStamp, g.metadata)
				}
			}
			// Without an application message-id the stamp is the message-id and rabbitkit adds no
			// headers: the metadata is empty.
			if !equalMaps(g.metadata, want) {
				t.Errorf("%s: metadata %v, want %v", st, g.metadata, want)
			}
		}
		if g := gots[string(body(0))]; g != nil {
			t.Logf("without an application message-id, watermill sees UUID %q, metadata %v", g.uuid, g.metadata)
		}
		if g := gots[string(body(1))]; g != nil {
			t.Logf("with message-id order-001, watermill sees UUID %q, metadata %v", g.uuid, g.metadata)
		}
		if n, first := log.nacks(); n != 0 {
			t.Errorf("watermill refused %d deliveries, first: %v", n, first)
		}
		// Each message was acked to the broker, not only to watermill: with the subscriber closed,
		// an unacked delivery would be back in the queue.
		if n := queueDepth(t, u, queue); n != 0 {
			t.Errorf("%d messages left in %s after the subscriber closed, want 0 (all acked)", n, queue)
		}
	})

	// Why contract v2: the v1 stamp was four headers, two of them AMQP long integers. watermill's
	// DefaultMarshaler turns each header into string metadata and refuses a delivery with any
	// other type; the subscriber then nacks it with requeue, and the broker hands it back at once.
	t.Run("legacy v1 stamp is refused by the default marshaler", func(t *testing.T) {
		queue := newQueue(t, u, "v1")
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		st := protocol.Stamp{Source: "legacy-publisher", Epoch: 7, Stream: "/" + queue, Seq: 1}
		withChannel(t, u, func(ch *amqp.Channel) {
			// The queue as watermill's durable queue config declares it.
			if _, err := ch.QueueDeclare(queue, true, false, false, false, nil); err != nil {
				t.Fatalf("declare %s: %v", queue, err)
			}
			if err := ch.Confirm(false); err != nil {
				t.Fatalf("confirm.select: %v", err)
			}
			dc, err := ch.PublishWithDeferredConfirmWithContext(ctx, "", queue, true, false, amqp.Publishing{
				Headers:      st.ApplyV1(nil),
				MessageId:    fmt.Sprintf("%s/%d/%s/%d", st.Source, st.Epoch, st.Stream, st.Seq), // v1's informational id
				DeliveryMode: amqp.Persistent,
				Body:         []byte("a legacy v1 message"),
			})
			if err != nil {
				t.Fatalf("publish: %v", err)
			}
			if ok, err := dc.WaitContext(ctx); err != nil || !ok {
				t.Fatalf("confirm: ack %v, %v", ok, err)
			}
		})

		log := &errorLog{}
		var handled atomic.Int64
		stop := startWatermill(t, u, queue, log, func(msg *message.Message) error {
			handled.Add(1)
			return nil
		})
		const watch = 3 * time.Second
		time.Sleep(watch)
		stop()

		if n := handled.Load(); n != 0 {
			t.Errorf("the v1 message reached watermill's handler %d times, want never", n)
		}
		nacks, first := log.nacks()
		// Refused, requeued, delivered and refused again: it spins for as long as the subscriber runs.
		if nacks < 2 {
			t.Errorf("watermill refused the v1 message %d times in %v, want it refused again and again (first: %v)", nacks, watch, first)
		}
		if first == nil || !regexp.MustCompile(`metadata rk-(epoch|seq) is not a string`).MatchString(first.Error()) {
			t.Errorf("watermill's error %v, want metadata rk-epoch or rk-seq (map order) is not a string", first)
		}
		t.Logf("watermill refused the v1 message %d times in %v (nack with requeue each time); first error: %v", nacks, watch, first)
		// Refused is not dropped: it is back in the queue, and would spin in the next subscriber too.
		// The queue is deleted at the end of the test.
		if n := queueDepth(t, u, queue); n != 1 {
			t.Errorf("%d messages in %s after the subscriber closed, want the 1 refused message", n, queue)
		}
	})
}

// body returns the i-th message body: text and bytes that are not UTF-8, to check the body travels
// byte for byte.
func body(i int) []byte {
	return append([]byte(fmt.Sprintf("body-%03d:", i)), 0x00, 0xff, 0xfe, byte(i), '\n')
}

func equalMaps(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if w, ok := b[k]; !ok || w != v {
			return false
		}
	}
	return true
}

// brokerURL skips in -short mode and fails when the broker does not answer.
func brokerURL(t *testing.T) string {
	t.Helper()
	if testing.Short() {
		t.Skip("needs a RabbitMQ broker ($RABBITKIT_AMQP_URL or " + defaultURL + ")")
	}
	u := os.Getenv("RABBITKIT_AMQP_URL")
	if u == "" {
		u = defaultURL
	}
	conn, err := amqp.DialConfig(u, amqp.Config{Dial: amqp.DefaultDial(5 * time.Second)})
	if err != nil {
		t.Fatalf("no RabbitMQ broker answers at %s: %v (start one or set RABBITKIT_AMQP_URL; -short skips this test)", redact(u), err)
	}
	_ = conn.Close()
	return u
}

func redact(s string) string {
	if p, err := url.Parse(s); err == nil {
		return p.Redacted()
	}
	return "(unparsable URL)"
}

// newQueue returns a queue name unique to this run and deletes the queue at the end of the test.
func newQueue(t *testing.T, u, purpose string) string {
	t.Helper()
	b := make([]byte, 6)
	_, _ = rand.Read(b)
	q := "rk-interop-watermill-" + purpose + "-" + hex.EncodeToString(b)
	t.Cleanup(func() {
		withChannel(t, u, func(ch *amqp.Channel) {
			if _, err := ch.QueueDelete(q, false, false, false); err != nil {
				t.Errorf("delete queue %s: %v", q, err)
			}
		})
	})
	return q
}

// withChannel runs f on a channel of a connection of its own, closed afterwards.
func withChannel(t *testing.T, u string, f func(*amqp.Channel)) {
	t.Helper()
	conn, err := amqp.DialConfig(u, amqp.Config{Dial: amqp.DefaultDial(5 * time.Second)})
	if err != nil {
		t.Fatalf("dial %s: %v", redact(u), err)
	}
	defer func() { _ = conn.Close() }()
	ch, err := conn.Channel()
	if err != nil {
		t.Fatalf("open channel: %v", err)
	}
	defer func() { _ = ch.Close() }()
	f(ch)
}

// queueDepth returns the number of ready messages in queue (unacked ones count once their
// consumer's channel is closed).
func queueDepth(t *testing.T, u, queue string) int {
	t.Helper()
	var n int
	withChannel(t, u, func(ch *amqp.Channel) {
		q, err := ch.QueueDeclarePassive(queue, true, false, false, false, nil)
		if err != nil {
			t.Fatalf("passive declare %s: %v", queue, err)
		}
		n = q.Messages
	})
	return n
}

// startWatermill runs a watermill Router with one consumer handler on topic, over a subscriber with
// the default durable queue config. The returned stop (also run at the end of the test) closes the
// router and the subscriber and waits for them.
func startWatermill(t *testing.T, u, topic string, logger watermill.LoggerAdapter, h message.NoPublishHandlerFunc) (stop func()) {
	t.Helper()
	sub, err := wamqp.NewSubscriber(wamqp.NewDurableQueueConfig(u), logger)
	if err != nil {
		t.Fatalf("watermill NewSubscriber: %v", err)
	}
	router, err := message.NewRouter(message.RouterConfig{}, logger)
	if err != nil {
		_ = sub.Close()
		t.Fatalf("watermill NewRouter: %v", err)
	}
	router.AddConsumerHandler("rabbitkit-interop", topic, sub, h)
	done := make(chan error, 1)
	go func() { done <- router.Run(context.Background()) }()

	var once sync.Once
	stop = func() {
		once.Do(func() {
			if err := router.Close(); err != nil {
				t.Errorf("watermill router Close: %v", err)
			}
			if err := <-done; err != nil {
				t.Errorf("watermill router Run: %v", err)
			}
			if err := sub.Close(); err != nil {
				t.Errorf("watermill subscriber Close: %v", err)
			}
		})
	}
	t.Cleanup(stop)
	select {
	case <-router.Running():
	case err := <-done:
		done <- err
		t.Fatalf("watermill router did not start: %v", err)
	case <-time.After(10 * time.Second):
		t.Fatal("watermill router not running after 10 s")
	}
	return stop
}

// errorLog is a watermill logger that keeps count of the deliveries its subscriber refused, the
// first such error and the first few other errors; it drops everything else.
type errorLog struct {
	mu       sync.Mutex
	refused  int
	firstErr error
	other    []string
}

func (l *errorLog) Error(msg string, err error, _ watermill.LogFields) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if msg != nackLogLine {
		if len(l.other) < 5 {
			l.other = append(l.other, fmt.Sprintf("%s: %v", msg, err))
		}
		return
	}
	l.refused++
	if l.firstErr == nil {
		l.firstErr = err
	}
}

func (l *errorLog) others() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]string(nil), l.other...)
}

func (l *errorLog) nacks() (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.refused, l.firstErr
}

func (l *errorLog) Info(string, watermill.LogFields)                 {}
func (l *errorLog) Debug(string, watermill.LogFields)                {}
func (l *errorLog) Trace(string, watermill.LogFields)                {}
func (l *errorLog) With(watermill.LogFields) watermill.LoggerAdapter { return l }
