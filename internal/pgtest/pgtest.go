// Package pgtest gives tests a PostgreSQL database of their own (tests only).
//
//	dsn := pgtest.DSN(t)   // a fresh database rk_<random> on the shared server, dropped at the end
//	pool := pgtest.Pool(t) // a small pgxpool on a fresh database, closed at the end
//	srv := pgtest.Private(t) // a private server (own data folder and port) a test may kill or restart
//
// The shared server is postgres@127.0.0.1:5432 with trust auth (`make postgres` starts it);
// RABBITKIT_PG_URL overrides it (a URL whose database is the maintenance database, e.g.
// postgres://postgres@127.0.0.1:5432/postgres). The server's max_connections (100 by default) is
// shared by every test package running at once: keep pools small (Pool uses at most 4).
package pgtest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// DefaultURL is the shared server's maintenance database, used unless RABBITKIT_PG_URL is set.
const DefaultURL = "postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable"

// ServerURL returns the maintenance database URL of the shared server: $RABBITKIT_PG_URL or DefaultURL.
func ServerURL() string {
	if u := os.Getenv("RABBITKIT_PG_URL"); u != "" {
		return u
	}
	return DefaultURL
}

// DSN creates a fresh, empty database rk_<random> on the shared server (ServerURL) and returns its
// URL. The database is dropped (WITH (FORCE), so connections still open are cut) when t ends.
// t fails at once if the server does not answer.
func DSN(t testing.TB) string {
	t.Helper()
	return CreateDatabase(t, ServerURL())
}

// CreateDatabase creates a fresh database rk_<random> on the server of the maintenance URL admin,
// drops it when t ends, and returns its URL.
func CreateDatabase(t testing.TB, admin string) string {
	t.Helper()
	if testing.Short() {
		t.Skip("needs PostgreSQL: run `make test`")
	}
	dsn, drop, err := NewDatabase(admin)
	if err != nil {
		t.Fatalf("pgtest: %v", err)
	}
	t.Cleanup(func() {
		if err := drop(); err != nil {
			t.Logf("pgtest: %v", err)
		}
	})
	return dsn
}

// NewDatabase creates a fresh database rk_<random> on the server of the maintenance URL admin and
// returns its URL and the function that drops it (WITH (FORCE)), for examples and benchmarks
// that have no testing.TB.
func NewDatabase(admin string) (dsn string, drop func() error, err error) {
	name := "rk_" + randomHex(6)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, admin)
	if err != nil {
		return "", nil, fmt.Errorf("connect to %s (run `make postgres`, or set RABBITKIT_PG_URL): %w", redact(admin), err)
	}
	defer func() { _ = conn.Close(context.Background()) }()
	if _, err := conn.Exec(ctx, "CREATE DATABASE "+pgx.Identifier{name}.Sanitize()); err != nil {
		return "", nil, fmt.Errorf("create database %s: %w", name, err)
	}
	u, err := url.Parse(admin)
	if err != nil {
		return "", nil, fmt.Errorf("parse %s: %w", redact(admin), err)
	}
	u.Path = "/" + name
	drop = func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		conn, err := pgx.Connect(ctx, admin)
		if err != nil {
			return fmt.Errorf("drop database %s: %w", name, err)
		}
		defer func() { _ = conn.Close(context.Background()) }()
		if _, err := conn.Exec(ctx, "DROP DATABASE IF EXISTS "+pgx.Identifier{name}.Sanitize()+" WITH (FORCE)"); err != nil {
			return fmt.Errorf("drop database %s: %w", name, err)
		}
		return nil
	}
	return u.String(), drop, nil
}

// Pool returns a pool of at most 4 connections on a fresh database (DSN); it is closed when t
// ends, before the database is dropped.
func Pool(t testing.TB) *pgxpool.Pool {
	t.Helper()
	return PoolOn(t, DSN(t), 4)
}

// PoolOn returns a pool of at most maxConns connections on dsn, closed when t ends.
func PoolOn(t testing.TB, dsn string, maxConns int32) *pgxpool.Pool {
	t.Helper()
	cfg, err := pgxpool.ParseConfig(dsn)
	if err != nil {
		t.Fatalf("pgtest: %v", err)
	}
	cfg.MaxConns = maxConns
	pool, err := pgxpool.NewWithConfig(context.Background(), cfg)
	if err != nil {
		t.Fatalf("pgtest: pool: %v", err)
	}
	t.Cleanup(pool.Close)
	return pool
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

func redact(u string) string {
	p, err := url.Parse(u)
	if err != nil {
		return "(unparsable URL)"
	}
	return p.Redacted()
}

// pgBin is where Debian puts the server binaries.
func pgBin(t testing.TB) string {
	t.Helper()
	matches, _ := filepath.Glob("/usr/lib/postgresql/*/bin/initdb")
	if len(matches) == 0 {
		t.Fatalf("pgtest: initdb not found under /usr/lib/postgresql (run `make postgres`, which installs it)")
	}
	return filepath.Dir(matches[len(matches)-1])
}

// Server is a private PostgreSQL server for tests that kill or restart it: its own data folder
// (under /tmp, owned by the postgres user) and port, trust auth for postgres on 127.0.0.1.
type Server struct {
	Port int
	// URL is the maintenance database postgres://postgres@127.0.0.1:<Port>/postgres.
	URL string

	bin, dir string
	mu       sync.Mutex
	running  bool
}

// Private initialises and starts a private server (initdb takes 2–3 s) and stops it (immediate)
// and removes its folder when t ends. Its max_connections is 50.
func Private(t testing.TB) *Server {
	t.Helper()
	if testing.Short() {
		t.Skip("needs PostgreSQL's binaries: run `make test`")
	}
	s := &Server{bin: pgBin(t)}
	dir, err := os.MkdirTemp("", "rk-pg-")
	if err != nil {
		t.Fatalf("pgtest: %v", err)
	}
	s.dir = dir
	t.Cleanup(func() {
		s.Stop(t)
		_ = os.RemoveAll(dir)
	})
	if out, err := exec.Command("chown", "postgres:postgres", dir).CombinedOutput(); err != nil {
		t.Fatalf("pgtest: chown %s: %v: %s", dir, err, out)
	}
	if out, err := s.asPostgres(filepath.Join(s.bin, "initdb"), "-D", s.data(), "-A", "trust", "-U", "postgres", "--no-sync"); err != nil {
		t.Fatalf("pgtest: initdb: %v: %s", err, out)
	}
	s.Port = freePort(t)
	s.URL = fmt.Sprintf("postgres://postgres@127.0.0.1:%d/postgres?sslmode=disable", s.Port)
	s.Start(t)
	return s
}

func (s *Server) data() string { return filepath.Join(s.dir, "data") }

// asPostgres runs a command as the postgres user (the tests run as root, and the server refuses to).
func (s *Server) asPostgres(args ...string) ([]byte, error) {
	cmdline := ""
	for i, a := range args {
		if i > 0 {
			cmdline += " "
		}
		cmdline += shellQuote(a)
	}
	if os.Geteuid() != 0 {
		return exec.Command("bash", "-c", cmdline).CombinedOutput()
	}
	return exec.Command("su", "postgres", "-s", "/bin/bash", "-c", cmdline).CombinedOutput()
}

func shellQuote(s string) string {
	out := "'"
	for _, r := range s {
		if r == '\'' {
			out += `'\''`
			continue
		}
		out += string(r)
	}
	return out + "'"
}

// Start starts the server and waits until it accepts connections. Starting a running server does
// nothing.
func (s *Server) Start(t testing.TB) {
	t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.running {
		return
	}
	opts := fmt.Sprintf("-p %d -k %s -c listen_addresses=127.0.0.1 -c max_connections=50 -c fsync=off", s.Port, s.dir)
	if out, err := s.asPostgres(filepath.Join(s.bin, "pg_ctl"), "-D", s.data(), "-l", filepath.Join(s.dir, "log"), "-w", "-t", "60", "start", "-o", opts); err != nil {
		log, _ := os.ReadFile(filepath.Join(s.dir, "log"))
		t.Fatalf("pgtest: start server: %v: %s\n%s", err, out, log)
	}
	s.running = true
}

// Stop stops the server like a crash (pg_ctl -m immediate: no checkpoint, every connection cut;
// the next Start runs crash recovery). Stopping a stopped server does nothing.
func (s *Server) Stop(t testing.TB) {
	t.Helper()
	s.stop(t, "immediate")
}

// StopFast stops the server cleanly (pg_ctl -m fast).
func (s *Server) StopFast(t testing.TB) {
	t.Helper()
	s.stop(t, "fast")
}

func (s *Server) stop(t testing.TB, mode string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.running {
		return
	}
	if out, err := s.asPostgres(filepath.Join(s.bin, "pg_ctl"), "-D", s.data(), "-m", mode, "-w", "stop"); err != nil {
		t.Errorf("pgtest: stop server: %v: %s", err, out)
		return
	}
	s.running = false
}

// DSN creates a fresh database on the private server (dropped at the end, if the server runs) and
// returns its URL.
func (s *Server) DSN(t testing.TB) string {
	t.Helper()
	return CreateDatabase(t, s.URL)
}

func freePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("pgtest: %v", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// Port returns the port of a 127.0.0.1:<port> address, or 0.
func Port(addr string) int {
	_, p, err := net.SplitHostPort(addr)
	if err != nil {
		return 0
	}
	n, _ := strconv.Atoi(p)
	return n
}
