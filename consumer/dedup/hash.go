package dedup

import "hash/maphash"

// hashSeed is chosen once per process: body hashes are compared only within the process that
// computed them (the history is not persisted).
var hashSeed = maphash.MakeSeed()

// BodyHash returns a 64-bit hash of body for Commit and for comparison with Verdict.StoredHash. It
// is never 0 (0 means "no hash"). It is fast (AES-based where available) but seeded per process,
// so it must not be persisted or compared across processes.
func BodyHash(body []byte) uint64 {
	h := maphash.Bytes(hashSeed, body)
	if h == 0 {
		h = 1
	}
	return h
}
