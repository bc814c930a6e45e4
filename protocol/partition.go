package protocol

// Partition returns the partition, in [0, n), of stream among n partitions: FNV-1a (32-bit) of the
// stream's bytes, modulo n. Every publisher of a partitioned topology, in any language, must route
// a stream's messages to the partition this gives (docs/PROTOCOL.md, "Partitions"), so that each
// stream is consumed by one active consumer and its order is kept. n < 1 is taken as 1.
func Partition(stream string, n int) int {
	if n <= 1 {
		return 0
	}
	h := uint32(2166136261)
	for i := 0; i < len(stream); i++ {
		h ^= uint32(stream[i])
		h *= 16777619
	}
	return int(h % uint32(n))
}
