package topology_test

import (
	"bytes"
	"log/slog"
	"strings"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
	"github.com/stretchr/testify/require"

	"github.com/rabbitkit/rabbitkit/internal/testbroker"
	"github.com/rabbitkit/rabbitkit/topology"
)

func TestDeclareArgs(t *testing.T) {
	safe := func(q string, extra amqp.Table) amqp.Table {
		a := amqp.Table{"x-queue-type": "quorum", "x-dead-letter-exchange": "", "x-dead-letter-routing-key": q + ".parked",
			"x-dead-letter-strategy": "at-least-once", "x-overflow": "reject-publish", "x-delivery-limit": int64(topology.DefaultDeliveryLimit)}
		for k, v := range extra {
			if v == nil {
				delete(a, k)
			} else {
				a[k] = v
			}
		}
		return a
	}
	tests := []struct {
		name string
		q    topology.Queue
		want amqp.Table // nil: ErrInvalid
	}{
		{"classic: no defaults", topology.Queue{Name: "c", Args: amqp.Table{"x-max-length": 5}}, amqp.Table{"x-queue-type": "classic", "x-max-length": 5}},
		{"classic with a delivery limit: the broker ignores it", topology.Queue{Name: "c", Type: topology.Classic, Args: amqp.Table{"x-delivery-limit": 2}},
			amqp.Table{"x-queue-type": "classic", "x-delivery-limit": 2}},
		{"quorum: parked, at-least-once, limit 20", topology.Queue{Name: "q", Type: topology.Quorum}, safe("q", nil)},
		{"quorum: the caller's limit wins", topology.Queue{Name: "q", Type: topology.Quorum, Args: amqp.Table{"x-delivery-limit": 2}},
			safe("q", amqp.Table{"x-delivery-limit": 2})},
		{"quorum: the caller's dead-letter exchange wins, no routing key added", topology.Queue{Name: "q", Type: topology.Quorum, Args: amqp.Table{"x-dead-letter-exchange": "dlx"}},
			safe("q", amqp.Table{"x-dead-letter-exchange": "dlx", "x-dead-letter-routing-key": nil})},
		{"quorum: the caller's routing key on the default exchange", topology.Queue{Name: "q", Type: topology.Quorum, Args: amqp.Table{"x-dead-letter-routing-key": "mine"}},
			safe("q", amqp.Table{"x-dead-letter-routing-key": "mine"})},
		{"quorum: drop-head overflow keeps at-most-once", topology.Queue{Name: "q", Type: topology.Quorum, Args: amqp.Table{"x-overflow": "drop-head", "x-max-length": 10}},
			safe("q", amqp.Table{"x-overflow": "drop-head", "x-max-length": 10, "x-dead-letter-strategy": nil})},
		{"quorum: reject-publish given, at-least-once added", topology.Queue{Name: "q", Type: topology.Quorum, Args: amqp.Table{"x-overflow": "reject-publish"}}, safe("q", nil)},
		{"quorum: the caller's strategy wins, overflow untouched", topology.Queue{Name: "q", Type: topology.Quorum, Args: amqp.Table{"x-dead-letter-strategy": "at-most-once"}},
			safe("q", amqp.Table{"x-dead-letter-strategy": "at-most-once", "x-overflow": nil})},
		{"quorum, NoDeadLetter: nothing added", topology.Queue{Name: "q", Type: topology.Quorum, NoDeadLetter: true}, amqp.Table{"x-queue-type": "quorum"}},
		{"quorum, NoDeadLetter with a limit: refused", topology.Queue{Name: "q", Type: topology.Quorum, NoDeadLetter: true, Args: amqp.Table{"x-delivery-limit": 5}}, nil},
		{"quorum, NoDeadLetter with a limit and a target", topology.Queue{Name: "q", Type: topology.Quorum, NoDeadLetter: true, Args: amqp.Table{"x-delivery-limit": 5, "x-dead-letter-exchange": "dlx"}},
			amqp.Table{"x-queue-type": "quorum", "x-delivery-limit": 5, "x-dead-letter-exchange": "dlx"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := amqp.Table{}
			for k, v := range tt.q.Args {
				before[k] = v
			}
			got, err := tt.q.DeclareArgs()
			require.Len(t, tt.q.Args, len(before), "Args are not modified")
			for k, v := range before {
				require.Equal(t, v, tt.q.Args[k], "Args are not modified")
			}
			verr := topology.Topology{Queues: []topology.Queue{tt.q}}.Validate()
			if tt.want == nil {
				require.ErrorIs(t, err, topology.ErrInvalid)
				require.ErrorIs(t, verr, topology.ErrInvalid)
				require.ErrorContains(t, err, "drop")
				return
			}
			require.NoError(t, err)
			require.NoError(t, verr)
			require.Equal(t, tt.want, got)
		})
	}
}

// legacyQueue declares name as an older rabbitkit did: a quorum queue with its own Args only.
func legacyQueue(t *testing.T, url, name string, args amqp.Table) {
	t.Helper()
	conn, err := amqp.Dial(url)
	require.NoError(t, err)
	defer conn.Close()
	ch, err := conn.Channel()
	require.NoError(t, err)
	a := amqp.Table{"x-queue-type": "quorum"}
	for k, v := range args {
		a[k] = v
	}
	_, err = ch.QueueDeclare(name, true, false, false, false, a)
	require.NoError(t, err)
}

// declareOnce declares top on a fresh channel of conn.
func declareOnce(t *testing.T, conn *amqp.Connection, top topology.Topology) error {
	t.Helper()
	ch, err := conn.Channel()
	require.NoError(t, err)
	defer ch.Close()
	return top.Declare(ch)
}

func TestDeclareQuorumSafeByDefault(t *testing.T) {
	url := testbroker.SharedURL(t)
	q := testbroker.Name(t, "topo-qsafe")
	testbroker.DeleteQueues(t, url, q, q+".parked")
	conn, err := amqp.Dial(url)
	require.NoError(t, err)
	defer conn.Close()
	top := topology.Topology{Queues: []topology.Queue{{Name: q, Type: topology.Quorum}}}
	require.NoError(t, declareOnce(t, conn, top))
	require.NoError(t, declareOnce(t, conn, top), "idempotent")

	// The broker holds the defaults: redeclaring with exactly DeclareArgs is accepted. The parking
	// queue is the consumer's to declare (a durable classic queue by default).
	args, err := top.Queues[0].DeclareArgs()
	require.NoError(t, err)
	ch, err := conn.Channel()
	require.NoError(t, err)
	defer ch.Close()
	_, err = ch.QueueDeclare(q, true, false, false, false, args)
	require.NoError(t, err)
	_, err = ch.QueueDeclare(q+".parked", true, false, false, false, amqp.Table{"x-queue-type": "classic"})
	require.NoError(t, err)

	// A rejected message is dead-lettered there, with x-death.
	require.NoError(t, ch.Publish("", q, false, false, amqp.Publishing{MessageId: "m1", Body: []byte("x")}))
	var d amqp.Delivery
	require.Eventually(t, func() bool {
		var ok bool
		d, ok, err = ch.Get(q, false)
		require.NoError(t, err)
		return ok
	}, 5*time.Second, 20*time.Millisecond)
	require.NoError(t, d.Reject(false))
	require.Eventually(t, func() bool {
		var ok bool
		d, ok, err = ch.Get(q+".parked", true)
		require.NoError(t, err)
		return ok
	}, 5*time.Second, 20*time.Millisecond)
	require.Equal(t, "m1", d.MessageId)
	require.Equal(t, "rejected", d.Headers["x-first-death-reason"])
}

func TestDeclareExistingQuorumQueueWithoutDefaultsWarns(t *testing.T) {
	url := testbroker.SharedURL(t)
	q, conflict := testbroker.Name(t, "topo-qold"), testbroker.Name(t, "topo-qconflict")
	testbroker.DeleteQueues(t, url, q, q+".parked", conflict, conflict+".parked")
	legacyQueue(t, url, q, amqp.Table{"x-max-length": int64(100)})
	var logs bytes.Buffer
	logger := slog.New(slog.NewTextHandler(&logs, nil))
	top := topology.Topology{Logger: logger, Queues: []topology.Queue{{Name: q, Type: topology.Quorum, Args: amqp.Table{"x-max-length": int64(100)}}}}
	conn, err := amqp.Dial(url)
	require.NoError(t, err)
	defer conn.Close()

	// The first declaration meets the old queue: 406, said so.
	err = declareOnce(t, conn, top)
	var aerr *amqp.Error
	require.ErrorAs(t, err, &aerr)
	require.Equal(t, amqp.PreconditionFailed, aerr.Code)
	require.ErrorContains(t, err, "exists with other arguments")
	require.Empty(t, logs.String())

	// The next (the caller's reconnect) accepts it as it is and warns once.
	require.NoError(t, declareOnce(t, conn, top))
	require.NoError(t, declareOnce(t, conn, top))
	out := logs.String()
	require.Equal(t, 1, strings.Count(out, "level=WARN"), out)
	require.Contains(t, out, "DROPS messages")
	require.Contains(t, out, "queue="+q)
	require.Contains(t, out, `rabbitmqctl set_policy --apply-to queues`)
	require.Contains(t, out, `dead-letter-routing-key\":\"`+q+`.parked`)

	// The policy the warning gives is accepted by the broker's syntax (checked without applying:
	// the hint is a shell command line; its JSON part is what a policy carries).
	hint := topology.PolicyHint(q)
	require.Contains(t, hint, `'^`+strings.ReplaceAll(q, ".", `\.`)+`$'`)

	// An old queue whose own arguments differ too is a real conflict: reported every time, never
	// accepted.
	legacyQueue(t, url, conflict, amqp.Table{"x-max-length": int64(5)})
	bad := topology.Topology{Logger: logger, Queues: []topology.Queue{{Name: conflict, Type: topology.Quorum, Args: amqp.Table{"x-max-length": int64(6)}}}}
	for range 3 {
		err = declareOnce(t, conn, bad)
		require.ErrorAs(t, err, &aerr)
		require.Equal(t, amqp.PreconditionFailed, aerr.Code)
	}
	require.NotContains(t, logs.String(), "queue="+conflict)

	// A queue deleted after it was seen old is declared with the defaults again, never re-created
	// without them.
	ch, err := conn.Channel()
	require.NoError(t, err)
	_, err = ch.QueueDelete(q, false, false, false)
	require.NoError(t, err)
	_ = ch.Close()
	err = declareOnce(t, conn, top)
	require.ErrorAs(t, err, &aerr)
	require.Equal(t, amqp.NotFound, aerr.Code)
	require.NoError(t, declareOnce(t, conn, top))
	args, err := top.Queues[0].DeclareArgs()
	require.NoError(t, err)
	ch, err = conn.Channel()
	require.NoError(t, err)
	defer ch.Close()
	_, err = ch.QueueDeclare(q, true, false, false, false, args)
	require.NoError(t, err, "re-created with the defaults")
}

// DeclareConn probes on a channel of its own: an old queue is accepted with the warning at the first
// declaration, and the caller's channel stays open.
func TestDeclareConnOldQueueFirstTime(t *testing.T) {
	url := testbroker.SharedURL(t)
	q, fresh := testbroker.Name(t, "topo-qold-conn"), testbroker.Name(t, "topo-qnew-conn")
	testbroker.DeleteQueues(t, url, q, fresh)
	legacyQueue(t, url, q, nil)
	var logs bytes.Buffer
	top := topology.Topology{Logger: slog.New(slog.NewTextHandler(&logs, nil)),
		Queues: []topology.Queue{{Name: q, Type: topology.Quorum}, {Name: fresh, Type: topology.Quorum}}}
	conn, err := amqp.Dial(url)
	require.NoError(t, err)
	defer conn.Close()
	ch, err := conn.Channel()
	require.NoError(t, err)
	defer ch.Close()
	require.NoError(t, top.DeclareConn(conn, ch))
	require.False(t, ch.IsClosed())
	require.Contains(t, logs.String(), "queue="+q)
	require.NotContains(t, logs.String(), "queue="+fresh)
	require.NoError(t, top.DeclareConn(conn, ch), "idempotent")
	require.Equal(t, 1, strings.Count(logs.String(), "level=WARN"))
	args, err := top.Queues[1].DeclareArgs()
	require.NoError(t, err)
	_, err = ch.QueueDeclare(fresh, true, false, false, false, args)
	require.NoError(t, err, "the new queue has the defaults")
}
