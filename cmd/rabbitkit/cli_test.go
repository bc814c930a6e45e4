package main

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"

	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
)

var update = flag.Bool("update", false, "rewrite testdata/*.golden")

// testPassword is put in every DSN and URL the tests give the CLI; TestMain fails the run if any
// output of the CLI contains it.
const testPassword = "Sekr1tTestPw"

var (
	allOutMu sync.Mutex
	allOut   bytes.Buffer // every byte the CLI printed in this run
)

func TestMain(m *testing.M) {
	code := m.Run()
	if code == 0 {
		allOutMu.Lock()
		if bytes.Contains(allOut.Bytes(), []byte(testPassword)) {
			fmt.Fprintln(os.Stderr, "FAIL: the CLI printed the test password")
			code = 1
		}
		allOutMu.Unlock()
	}
	if code == 0 {
		if err := goleak.Find(); err != nil {
			fmt.Fprintln(os.Stderr, "FAIL: leaked goroutines:", err)
			code = 1
		}
	}
	os.Exit(code)
}

// cli runs the command line and returns its exit code, stdout and stderr.
func cli(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	var out, errb bytes.Buffer
	code := runMain(context.Background(), args, &out, &errb)
	allOutMu.Lock()
	allOut.Write(out.Bytes())
	allOut.Write(errb.Bytes())
	allOutMu.Unlock()
	return code, out.String(), errb.String()
}

// withPassword returns the URL u with testPassword as its password.
func withPassword(t *testing.T, u string) string {
	t.Helper()
	p, err := url.Parse(u)
	require.NoError(t, err)
	p.User = url.UserPassword(p.User.Username(), testPassword)
	return p.String()
}

var ageRE = regexp.MustCompile(`\(age [^)]*\)`)

var timeRE = regexp.MustCompile(`\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z`)

// golden compares got, its times masked, with testdata/name.golden (rewritten with -update).
func golden(t *testing.T, name, got string) {
	t.Helper()
	got = timeRE.ReplaceAllString(got, "TIME")
	got = ageRE.ReplaceAllString(got, "(age AGE)")
	path := filepath.Join("testdata", name+".golden")
	if *update {
		require.NoError(t, os.MkdirAll("testdata", 0o755))
		require.NoError(t, os.WriteFile(path, []byte(got), 0o644))
		return
	}
	want, err := os.ReadFile(path)
	require.NoError(t, err, "run with -update to create it")
	require.Equal(t, string(want), got, "%s differs (-update rewrites it)", path)
}

func TestRedact(t *testing.T) {
	for in, want := range map[string]string{
		"postgres://u:" + testPassword + "@h/db":        "postgres://u:xxxxx@h/db",
		"amqp://guest:" + testPassword + "@h:5672/":     "amqp://guest:xxxxx@h:5672/",
		"host=h password=" + testPassword + " user=u":   "host=h password=xxxxx user=u",
		"host=h password='" + testPassword + "' user=u": "host=h password=xxxxx user=u",
		"postgres://u@h/db":                             "postgres://u@h/db",
	} {
		require.Equal(t, want, redactURL(in))
	}
	err := redactErr(fmt.Errorf("dial postgres://u:%s@h: refused", testPassword), "postgres://u:"+testPassword+"@h")
	require.NotContains(t, err.Error(), testPassword)
	require.False(t, strings.Contains(err.Error(), testPassword))
}
