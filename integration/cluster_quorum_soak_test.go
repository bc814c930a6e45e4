//go:build soak

package integration

import (
	"fmt"
	"os"
	"runtime"
	"strings"
	"testing"
	"time"
)

// TestSoakClusterQuorum is the long form of TestClusterQuorum, under `make soak`: by default 10
// rounds of the three node kills (30 faults, shuffled) over 2 x 60,000 messages.
// RABBITKIT_SOAK_CLUSTER_ROUNDS scales it.
func TestSoakClusterQuorum(t *testing.T) {
	rounds := envInt(t, "RABBITKIT_SOAK_CLUSTER_ROUNDS", 10)
	report, ok := runClusterQuorum(t, clusterParams{
		nodes: 3, sources: 2, perSource: 6000 * rounds,
		// About 25 s per fault (kill, election, restart, rabbitmqctl calls) plus the pause.
		publishIn: time.Duration(rounds) * 3 * 27 * time.Second,
		rounds:    rounds, shuffle: true, pause: 2 * time.Second,
	})
	writeClusterReliability(t, rounds, report, ok)
}

// writeClusterReliability writes docs/RELIABILITY-CLUSTER.md from a TestSoakClusterQuorum run.
func writeClusterReliability(t *testing.T, rounds int, report string, ok bool) {
	var b strings.Builder
	cmd := "make soak"
	if rounds != 10 {
		cmd = fmt.Sprintf("RABBITKIT_SOAK_CLUSTER_ROUNDS=%d go test -race=false -count=1 -timeout 2h -tags soak -run TestSoakClusterQuorum -v ./integration/", rounds)
	}
	b.WriteString("# Reliability: a RabbitMQ cluster under fire\n\n")
	b.WriteString("This file is written by `TestSoakClusterQuorum` (integration/cluster_quorum_soak_test.go), and its\n")
	b.WriteString("classic queue section by `TestSoakClusterClassic`. Do not edit it by hand: run the command below\n")
	fmt.Fprintf(&b, "(`make soak` runs both) and commit what it writes.\n\n```sh\n%s\n```\n\n", cmd)
	if rounds != 10 {
		fmt.Fprintf(&b, "**This is a scaled-down run** (%d rounds of the three node kills), not the default 10.\n\n", rounds)
	}
	b.WriteString("What it does: three private RabbitMQ nodes joined in a cluster (own node names, ports and data\n")
	b.WriteString("folders), a quorum queue, two `examples/publisher` processes and one `examples/consumer`, each\n")
	b.WriteString("given every node's URL. Rounds of three faults in a shuffled order: kill -9 of the node the\n")
	b.WriteString("publisher is connected to, of the queue's leader, and of the consumer's node, each restarted.\n")
	b.WriteString("Confirms outstanding during a leader change are unknown outcomes and are resent; the consumer\n")
	b.WriteString("drops the copies. The ledger is checked against the publishers' `accepted` lines\n")
	b.WriteString("(internal/history.Check).\n\n")
	fmt.Fprintf(&b, "Measured %s with binaries built at commit %s, on %s, %d CPUs (shared with other work), %s, RabbitMQ %s.\n\n",
		time.Now().UTC().Format("2006-01-02 15:04 MST"), buildCommit, hostDesc(), runtime.NumCPU(), runtime.Version(), rabbitVersion())
	verdict := "PASS"
	if !ok {
		verdict = "FAIL"
	}
	fmt.Fprintf(&b, "## quorum queue: %s\n%s\n", verdict, report)
	// The classic queue's section is TestSoakClusterClassic's: keep the last one written.
	if cur, err := os.ReadFile("../docs/RELIABILITY-CLUSTER.md"); err == nil && strings.Contains(string(cur), classicHeading) {
		b.WriteString(string(cur)[strings.Index(string(cur), classicHeading):])
	} else {
		b.WriteString(classicHeading + "not run yet\n\nRun TestSoakClusterClassic (`make soak`).\n")
	}
	if err := os.WriteFile("../docs/RELIABILITY-CLUSTER.md", []byte(b.String()), 0o644); err != nil {
		t.Errorf("write RELIABILITY-CLUSTER.md: %v", err)
	}
	writeSoakSummary(t)
}
