//go:build soak

package integration

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// soakReports are the soaks' reports in docs/, in the order docs/RELIABILITY.md's summary lists
// them, with what each one runs.
var soakReports = []struct{ file, test, what string }{
	{"RELIABILITY.md", "TestSoak", "bbolt journal → bbolt consumer on one private node, faults on the broker and both processes"},
	{"RELIABILITY-PG.md", "TestSoakPG", "PostgreSQL inbox: competing consumers, PostgreSQL crashed and restarted"},
	{"RELIABILITY-OUTBOX.md", "TestSoakOutboxFire", "PostgreSQL outbox: three replicas, the relay killed, cut off and taken over, PostgreSQL crashed"},
	{"RELIABILITY-CLUSTER.md", "TestSoakClusterQuorum`, `TestSoakClusterClassic", "three-node cluster, node kills: a quorum queue (the leader's, publisher's and consumer's nodes), and a classic queue (its node too: parked, then re-driven by the operator's step)"},
}

const summaryBegin, summaryEnd = "<!-- soak summary: written by writeSoakSummary -->", "<!-- end of soak summary -->"

var (
	measuredRE = regexp.MustCompile(`^Measured (\S+ \S+ UTC) with binaries built at commit (\w+)( \(plus uncommitted changes in the tree\))?`)
	verdictRE  = regexp.MustCompile(`^(?:## (.+): )?(PASS|FAIL)(?::\s*(.*?))?\.?$`)
)

// soakVerdict is one verdict line of a report: a section (a queue type) may have its own.
type soakVerdict struct{ section, verdict, detail string }

// readSoakReport extracts a report's date, commit, scale and verdicts; ok is false when the file
// is missing.
func readSoakReport(path string) (measured, commit string, scaled bool, verdicts []soakVerdict, ok bool) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", "", false, nil, false
	}
	section := ""
	for _, line := range strings.Split(string(b), "\n") {
		if m := measuredRE.FindStringSubmatch(line); m != nil { // a report with sections may have one per section
			c := m[2]
			if m[3] != "" {
				c += " (+ changes)"
			}
			if measured != "" {
				measured, commit = measured+"; ", commit+"; "
			}
			measured, commit = measured+m[1], commit+c
		}
		if strings.HasPrefix(line, "**This is a scaled-down run**") {
			scaled = true
		}
		if m := verdictRE.FindStringSubmatch(line); m != nil {
			s := m[1]
			if s == "" {
				s = section
			}
			verdicts = append(verdicts, soakVerdict{section: s, verdict: m[2], detail: m[3]})
			continue
		}
		if h, found := strings.CutPrefix(line, "## "); found {
			section = h
		}
	}
	return measured, commit, scaled, verdicts, true
}

// writeSoakSummary rewrites the summary table between the markers in docs/RELIABILITY.md from
// every soak's report as it is on disk. Each soak calls it after writing its own report, so the
// table says when each one last ran, at which commit, and with what verdict.
func writeSoakSummary(t *testing.T) {
	t.Helper()
	var b strings.Builder
	b.WriteString(summaryBegin + "\n")
	b.WriteString("Every soak writes its own report; this table is rewritten from all of them each time one runs.\n\n")
	b.WriteString("| soak | what it runs | verdict | last run (UTC), commit | scale | report |\n|---|---|---|---|---|---|\n")
	for _, r := range soakReports {
		measured, commit, scaled, verdicts, ok := readSoakReport(filepath.Join("..", "docs", r.file))
		if !ok {
			fmt.Fprintf(&b, "| `%s` | %s | not run yet | | | |\n", r.test, r.what)
			continue
		}
		var vs []string
		for _, v := range verdicts {
			s := "**" + v.verdict + "**"
			if v.section != "" {
				s = v.section + ": " + s
			}
			if v.detail != "" {
				s += " (" + v.detail + ")"
			}
			vs = append(vs, s)
		}
		if len(vs) == 0 {
			vs = []string{"no verdict in the report"}
		}
		scale := "full"
		if scaled {
			scale = "scaled down"
		}
		when := measured + ", " + commit
		if ms, cs := strings.Split(measured, "; "), strings.Split(commit, "; "); len(ms) > 1 && len(ms) == len(cs) {
			var parts []string
			for i := range ms {
				parts = append(parts, ms[i]+", "+cs[i])
			}
			when = strings.Join(parts, "; ")
		}
		fmt.Fprintf(&b, "| `%s` | %s | %s | %s | %s | [%s](%s) |\n", r.test, r.what, strings.Join(vs, "; "), when, scale, r.file, r.file)
	}
	b.WriteString(summaryEnd + "\n")

	path := filepath.Join("..", "docs", "RELIABILITY.md")
	cur, err := os.ReadFile(path)
	if err != nil {
		t.Errorf("soak summary: %v", err)
		return
	}
	s := string(cur)
	i, j := strings.Index(s, summaryBegin), strings.Index(s, summaryEnd)
	if i < 0 || j < i {
		t.Errorf("soak summary: %s has no summary markers; run TestSoak (make soak) to rewrite it", path)
		return
	}
	s = s[:i] + b.String() + s[j+len(summaryEnd)+1:]
	if err := os.WriteFile(path, []byte(s), 0o644); err != nil {
		t.Errorf("soak summary: %v", err)
	}
}

// TestSoakSummary rewrites docs/RELIABILITY.md's summary of every soak's last report (each soak
// does it too; this runs it alone: go test -tags soak -run TestSoakSummary ./integration/).
func TestSoakSummary(t *testing.T) { writeSoakSummary(t) }
