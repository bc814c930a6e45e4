package deploy

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// promtool returns promtool's path; under -short a missing promtool skips, otherwise it fails
// (make test installs it: scripts/ensure-promtool.sh).
func promtool(t *testing.T) string {
	t.Helper()
	p, err := exec.LookPath("promtool")
	if err != nil {
		if testing.Short() {
			t.Skip("promtool not installed (-short)")
		}
		t.Fatalf("promtool not installed: run scripts/ensure-promtool.sh (make promtool): %v", err)
	}
	return p
}

func run(t *testing.T, name string, args ...string) {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	require.NoError(t, err, "%s %s:\n%s", name, strings.Join(args, " "), out)
}

func TestAlertRules(t *testing.T) {
	p := promtool(t)
	run(t, p, "check", "rules", "prometheus/rabbitkit-alerts.yml")
	run(t, p, "test", "rules", "prometheus/rabbitkit-alerts_test.yml")
}

// Every alert has a runbook entry in docs/OPERATIONS.md under the anchor its runbook_url names.
func TestAlertRunbooks(t *testing.T) {
	rules, err := os.ReadFile("prometheus/rabbitkit-alerts.yml")
	require.NoError(t, err)
	ops, err := os.ReadFile("../docs/OPERATIONS.md")
	require.NoError(t, err)
	n := 0
	for line := range strings.SplitSeq(string(rules), "\n") {
		name, ok := strings.CutPrefix(strings.TrimSpace(line), "- alert: ")
		if !ok {
			continue
		}
		n++
		require.Contains(t, string(rules), "OPERATIONS.md#"+strings.ToLower(name)+`"`, name)
		require.True(t, strings.Contains(string(ops), "\n### "+name+"\n"), "docs/OPERATIONS.md has no runbook entry for %s", name)
	}
	require.Greater(t, n, 5)
}

// collectExprs returns every "expr" string in a Grafana dashboard.
func collectExprs(v any, out *[]string) {
	switch x := v.(type) {
	case map[string]any:
		for k, e := range x {
			if s, ok := e.(string); ok && k == "expr" {
				*out = append(*out, s)
				continue
			}
			collectExprs(e, out)
		}
	case []any:
		for _, e := range x {
			collectExprs(e, out)
		}
	}
}

// Every PromQL expression of the dashboard parses: they are written as recording rules (Grafana's
// variables replaced by values) into a temporary file that promtool checks.
func TestDashboardQueries(t *testing.T) {
	p := promtool(t)
	raw, err := os.ReadFile("grafana/rabbitkit.json")
	require.NoError(t, err)
	var d any
	require.NoError(t, json.Unmarshal(raw, &d))
	var exprs []string
	collectExprs(d, &exprs)
	require.Greater(t, len(exprs), 10)
	repl := strings.NewReplacer("$__rate_interval", "5m", "$__interval", "1m", "$client", ".*")
	var b strings.Builder
	b.WriteString("groups:\n  - name: dashboard\n    rules:\n")
	for i, e := range exprs {
		e = repl.Replace(e)
		require.NotContains(t, e, "$", "a Grafana variable the test does not substitute: %s", e)
		q, err := json.Marshal(e)
		require.NoError(t, err)
		fmt.Fprintf(&b, "      - record: rabbitkit:dashboard:expr%d\n        expr: %s\n", i, q)
	}
	f := filepath.Join(t.TempDir(), "dashboard-rules.yml")
	require.NoError(t, os.WriteFile(f, []byte(b.String()), 0o644))
	run(t, p, "check", "rules", f)
}
