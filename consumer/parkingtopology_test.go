package consumer

import (
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/rabbitkit/rabbitkit/topology"
)

// The consumer hands its Logger to the topology (for the warning about an old quorum queue) and
// declares a quorum queue with the arguments any other declarer gives it: the dead-letter target
// stays <queue>.parked even with a custom ParkingQueue (a publisher declaring the same queue would
// otherwise get 406).
func TestParkingTopology(t *testing.T) {
	top := topology.Topology{Queues: []topology.Queue{{Name: "q", Type: topology.Quorum}}}
	cfg, err := Config{URLs: []string{"amqp://localhost/"}, Queue: "q", ParkingQueue: "parking", Topology: top}.withDefaults()
	require.NoError(t, err)
	got := cfg.parkingTopology()
	require.Nil(t, top.Logger, "the caller's topology is untouched")
	require.Same(t, cfg.Logger, got.Logger)
	require.Equal(t, []topology.Queue{{Name: "q", Type: topology.Quorum}, {Name: "parking"}}, got.Queues)
	mine, err := got.Queues[0].DeclareArgs()
	require.NoError(t, err)
	theirs, err := top.Queues[0].DeclareArgs()
	require.NoError(t, err)
	require.Equal(t, theirs, mine)
	require.Equal(t, "q.parked", mine[topology.ArgDeadLetterRoutingKey])
}
