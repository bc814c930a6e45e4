package protocol_test

import (
	"fmt"
	"testing"

	"github.com/rabbitkit/rabbitkit/protocol"
)

// The vectors are FNV-1a 32-bit as published (offset basis 2166136261, prime 16777619); a
// publisher in another language checks itself against them.
func TestPartition(t *testing.T) {
	cases := []struct {
		stream string
		n      int
		want   int
	}{
		{"", 8, int(2166136261 % 8)},
		{"a", 1000, int(0xe40c292c % 1000)},
		{"foobar", 97, int(0xbf9cf968 % 97)},
		{"orders/eu", 1, 0},
		{"orders/eu", 0, 0},
	}
	for _, tc := range cases {
		if got := protocol.Partition(tc.stream, tc.n); got != tc.want {
			t.Errorf("Partition(%q, %d) = %d, want %d", tc.stream, tc.n, got, tc.want)
		}
	}
	// Spread: 10,000 streams over 8 partitions, each within 20% of the mean.
	counts := make([]int, 8)
	for i := range 10000 {
		counts[protocol.Partition(fmt.Sprintf("customer-%d", i), 8)]++
	}
	for p, c := range counts {
		if c < 1000 || c > 1500 {
			t.Errorf("partition %d got %d of 10000 streams", p, c)
		}
	}
}
