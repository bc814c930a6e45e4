package consumer

import (
	"testing"

	amqp "github.com/rabbitmq/amqp091-go"
	"github.com/stretchr/testify/require"

	"github.com/rabbitkit/rabbitkit/topology"
)

// A quorum queue dead-letters to the consumer's parking queue, also when it is not the default
// name; the caller's Topology is not modified.
func TestParkingTopologyDeadLettersToParkingQueue(t *testing.T) {
	top := topology.Topology{Queues: []topology.Queue{{Name: "q", Type: topology.Quorum}, {Name: "other", Type: topology.Quorum}}}
	cfg, err := Config{URLs: []string{"amqp://localhost/"}, Queue: "q", ParkingQueue: "parking", Topology: top}.withDefaults()
	require.NoError(t, err)
	got := cfg.parkingTopology()
	require.Nil(t, top.Queues[0].Args, "the caller's topology is untouched")
	require.Same(t, cfg.Logger, got.Logger)
	require.Len(t, got.Queues, 3)
	args, err := got.Queues[0].DeclareArgs()
	require.NoError(t, err)
	require.Equal(t, "parking", args[topology.ArgDeadLetterRoutingKey])
	require.Equal(t, "", args[topology.ArgDeadLetterExchange])
	args, err = got.Queues[1].DeclareArgs()
	require.NoError(t, err)
	require.Equal(t, "other.parked", args[topology.ArgDeadLetterRoutingKey], "another queue keeps its own")
	require.Equal(t, topology.Queue{Name: "parking"}, got.Queues[2])

	// The caller's own dead-letter target wins.
	top.Queues[0].Args = amqp.Table{topology.ArgDeadLetterExchange: "dlx"}
	cfg.Topology = top
	got = cfg.parkingTopology()
	require.Equal(t, amqp.Table{topology.ArgDeadLetterExchange: "dlx"}, got.Queues[0].Args)

	// With the default parking queue nothing is rewritten.
	cfg, err = Config{URLs: []string{"amqp://localhost/"}, Queue: "q", Topology: topology.Topology{Queues: []topology.Queue{{Name: "q", Type: topology.Quorum}}}}.withDefaults()
	require.NoError(t, err)
	got = cfg.parkingTopology()
	require.Nil(t, got.Queues[0].Args)
	require.Equal(t, "q.parked", got.Queues[1].Name)
}
