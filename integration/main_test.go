// Package integration is the black-box chaos suite: it builds the example binaries, runs them as
// real processes against a private RabbitMQ node behind a toxiproxy, injects faults and checks
// that every accepted message was applied exactly once (internal/history.Check).
package integration

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/rabbitkit/rabbitkit/internal/testbroker"
)

var (
	buildOnce   sync.Once
	buildDir    string
	buildErr    error
	buildCommit string // git commit of the tree the binaries were built from, for reports
)

func TestMain(m *testing.M) {
	code := m.Run()
	if buildDir != "" {
		_ = os.RemoveAll(buildDir)
	}
	if code == 0 {
		// toxiproxy v2.12.0 leaves a link's goroutines blocked on a channel send when a proxy is
		// stopped while a toxic is being swapped under live traffic (seen after the chaos run);
		// they belong to the test proxy, not to anything under test.
		if err := goleak.Find(testbroker.IgnoreProxyLeaks()...); err != nil {
			fmt.Fprintf(os.Stderr, "goleak: %v\n", err)
			code = 1
		}
	}
	os.Exit(code)
}

// binaries builds the example binaries once per test run (with -race when the tests run with it)
// and returns the folder holding them.
func binaries(t testing.TB) string {
	t.Helper()
	buildOnce.Do(func() {
		buildDir, buildErr = os.MkdirTemp("", "rabbitkit-integration-bin-")
		if buildErr != nil {
			return
		}
		root, err := filepath.Abs("..")
		if err != nil {
			buildErr = err
			return
		}
		args := []string{"build", "-o", buildDir + string(filepath.Separator)}
		if raceEnabled {
			args = append(args, "-race")
		}
		args = append(args, "./examples/publisher", "./examples/consumer", "./examples/demo", "./examples/httpservice", "./cmd/rabbitkit")
		buildCommit = gitCommit(root)
		start := time.Now()
		cmd := exec.Command(goTool(), args...)
		cmd.Dir = root
		out, err := cmd.CombinedOutput()
		if err != nil {
			buildErr = fmt.Errorf("go %v: %w\n%s", args, err, out)
			return
		}
		fmt.Fprintf(os.Stderr, "integration: built example binaries (race=%v) in %v\n", raceEnabled, time.Since(start).Round(time.Millisecond))
	})
	if buildErr != nil {
		t.Fatalf("build example binaries: %v", buildErr)
	}
	return buildDir
}

// gitCommit names the commit of the tree at root, flagging uncommitted changes to tracked files.
func gitCommit(root string) string {
	cmd := exec.Command("git", "rev-parse", "--short", "HEAD")
	cmd.Dir = root
	out, err := cmd.Output()
	if err != nil {
		return "(unknown)"
	}
	c := strings.TrimSpace(string(out))
	cmd = exec.Command("git", "status", "--porcelain", "--untracked-files=no")
	cmd.Dir = root
	if st, err := cmd.Output(); err == nil && len(st) > 0 {
		c += " (plus uncommitted changes in the tree)"
	}
	return c
}

// goTool returns the go command: $GOROOT/bin/go when `go test` set GOROOT, else go from PATH.
func goTool() string {
	if root := os.Getenv("GOROOT"); root != "" {
		p := filepath.Join(root, "bin", "go")
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	return "go"
}
