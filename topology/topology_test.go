package topology_test

import (
	"testing"

	amqp "github.com/rabbitmq/amqp091-go"
	"github.com/stretchr/testify/require"

	"github.com/rabbitkit/rabbitkit/internal/testbroker"
	"github.com/rabbitkit/rabbitkit/topology"
)

func TestValidate(t *testing.T) {
	tests := []struct {
		name string
		top  topology.Topology
		ok   bool
	}{
		{"empty", topology.Topology{}, true},
		{"full", topology.Topology{
			Exchanges: []topology.Exchange{{Name: "e", Kind: "topic"}},
			Queues:    []topology.Queue{{Name: "q", Type: topology.Quorum}},
			Bindings:  []topology.Binding{{Queue: "q", Exchange: "e", Key: "#"}},
		}, true},
		{"unnamed exchange", topology.Topology{Exchanges: []topology.Exchange{{}}}, false},
		{"bad kind", topology.Topology{Exchanges: []topology.Exchange{{Name: "e", Kind: "x-weird"}}}, false},
		{"unnamed queue", topology.Topology{Queues: []topology.Queue{{}}}, false},
		{"bad queue type", topology.Topology{Queues: []topology.Queue{{Name: "q", Type: "stream"}}}, false},
		{"binding without exchange", topology.Topology{Bindings: []topology.Binding{{Queue: "q"}}}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.top.Validate()
			if tt.ok {
				require.NoError(t, err)
			} else {
				require.ErrorIs(t, err, topology.ErrInvalid)
			}
		})
	}
}

func TestDeclareIsIdempotentAndReportsConflicts(t *testing.T) {
	url := testbroker.SharedURL(t)
	ex, q, qq := testbroker.Name(t, "topo-ex"), testbroker.Name(t, "topo-q"), testbroker.Name(t, "topo-qq")
	testbroker.DeleteQueues(t, url, q, qq)
	testbroker.DeleteExchanges(t, url, ex)
	top := topology.Topology{
		Exchanges: []topology.Exchange{{Name: ex, Kind: amqp.ExchangeDirect}},
		Queues:    []topology.Queue{{Name: q}, {Name: qq, Type: topology.Quorum}},
		Bindings:  []topology.Binding{{Queue: q, Exchange: ex, Key: "k"}},
	}
	conn, err := amqp.Dial(url)
	require.NoError(t, err)
	defer conn.Close()
	ch, err := conn.Channel()
	require.NoError(t, err)
	require.NoError(t, top.Declare(ch))
	require.NoError(t, top.Declare(ch), "declaring twice is fine")

	// Redeclaring the quorum queue as classic is a precondition failure, reported with the queue's name.
	bad := topology.Topology{Queues: []topology.Queue{{Name: qq, Type: topology.Classic}}}
	err = bad.Declare(ch)
	var aerr *amqp.Error
	require.ErrorAs(t, err, &aerr)
	require.Equal(t, amqp.PreconditionFailed, aerr.Code)
	require.ErrorContains(t, err, qq)
}
