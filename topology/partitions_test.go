package topology_test

import (
	"errors"
	"testing"

	"github.com/rabbitkit/rabbitkit/protocol"
	"github.com/rabbitkit/rabbitkit/topology"
)

func TestPartitions(t *testing.T) {
	p := topology.Partitions{Exchange: "orders", Queue: "orders", Count: 4}
	if err := p.Validate(); err != nil {
		t.Fatal(err)
	}
	top := p.Topology()
	if len(top.Queues) != 4 || len(top.Bindings) != 4 || top.Queues[2].Name != "orders.2" || top.Bindings[3].Key != "3" {
		t.Fatalf("topology %+v", top)
	}
	for _, q := range top.Queues {
		if q.Args["x-single-active-consumer"] != true {
			t.Fatalf("%s without single active consumer", q.Name)
		}
	}
	if got, want := p.RoutingKey("customer-42"), protocol.Partition("customer-42", 4); got != string(rune('0'+want)) {
		t.Fatalf("RoutingKey = %s, want %d", got, want)
	}
	for _, bad := range []topology.Partitions{{Queue: "q", Count: 2}, {Exchange: "x", Count: 2}, {Exchange: "x", Queue: "q"}, {Exchange: "x", Queue: "q", Count: topology.MaxPartitions + 1}} {
		if err := bad.Validate(); !errors.Is(err, topology.ErrInvalid) {
			t.Errorf("%+v: %v, want ErrInvalid", bad, err)
		}
	}
}
