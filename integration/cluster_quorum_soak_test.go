//go:build soak

package integration

import (
	"testing"
	"time"
)

// TestSoakClusterQuorum is the long form of TestClusterQuorum, under `make soak`: by default 10
// rounds of the three node kills (30 faults, shuffled) over 2 x 60,000 messages.
// RABBITKIT_SOAK_CLUSTER_ROUNDS scales it.
func TestSoakClusterQuorum(t *testing.T) {
	rounds := envInt(t, "RABBITKIT_SOAK_CLUSTER_ROUNDS", 10)
	runClusterQuorum(t, clusterParams{
		nodes: 3, sources: 2, perSource: 6000 * rounds,
		// About 25 s per fault (kill, election, restart, rabbitmqctl calls) plus the pause.
		publishIn: time.Duration(rounds) * 3 * 27 * time.Second,
		rounds:    rounds, shuffle: true, pause: 2 * time.Second,
	})
}
