package protocol

import (
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"
)

// TestParkHeadersMatchTheContract: the parking header constants are exactly the rk-park- names that
// docs/PROTOCOL.md defines, and all share the prefix.
func TestParkHeadersMatchTheContract(t *testing.T) {
	consts := []string{HeaderParkReason, HeaderParkQueue, HeaderParkExchange, HeaderParkRoutingKey, HeaderParkTime,
		HeaderParkAttempts, HeaderParkExpiration, HeaderParkUserID, HeaderParkHeadersDropped}
	for _, h := range consts {
		if !strings.HasPrefix(h, HeaderParkPrefix) {
			t.Errorf("%s does not start with %s", h, HeaderParkPrefix)
		}
	}
	doc, err := os.ReadFile("../docs/PROTOCOL.md")
	if err != nil {
		t.Fatal(err)
	}
	var documented []string
	for _, m := range regexp.MustCompile("`(rk-park-[a-z-]+)`").FindAllStringSubmatch(string(doc), -1) {
		if !slices.Contains(documented, m[1]) {
			documented = append(documented, m[1])
		}
	}
	slices.Sort(consts)
	slices.Sort(documented)
	if !slices.Equal(consts, documented) {
		t.Fatalf("constants %v, docs/PROTOCOL.md documents %v", consts, documented)
	}
}
