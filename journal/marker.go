package journal

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
)

// marker is the sidecar file <path>.id, written once when a journal is created.
// Its presence proves that a journal existed at the path, so a missing or
// empty data file is detected instead of silently starting over.
type marker struct {
	Format int    `json:"format"`
	Source string `json:"source"`
	Epoch  int64  `json:"epoch"`
}

func markerPath(path string) string { return path + ".id" }

// readMarker returns (nil, nil) when there is no marker.
func readMarker(path string) (*marker, error) {
	b, err := os.ReadFile(markerPath(path))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("journal: read marker: %w", err)
	}
	var m marker
	if err := json.Unmarshal(b, &m); err != nil || m.Format != 1 || m.Epoch <= 0 {
		return nil, fmt.Errorf("%w: marker %s is unreadable (%q)", ErrCorrupt, markerPath(path), b)
	}
	return &m, nil
}

// SourceOf returns the source recorded when the journal at path was created (in its marker file
// <path>.id), for tools that open a journal they did not create, such as cmd/rabbitkit. When
// no journal was ever created at path the error wraps fs.ErrNotExist.
func SourceOf(path string) (string, error) {
	m, err := readMarker(path)
	if err != nil {
		return "", err
	}
	if m == nil {
		return "", fmt.Errorf("journal: no journal at %s (no marker file %s): %w", path, markerPath(path), fs.ErrNotExist)
	}
	return m.Source, nil
}

// writeMarker writes the marker atomically (temp file, fsync, rename, fsync dir).
func writeMarker(path string, m marker) error {
	m.Format = 1
	b, err := json.Marshal(m)
	if err != nil {
		return fmt.Errorf("journal: encode marker: %w", err)
	}
	b = append(b, '\n')
	final := markerPath(path)
	tmp := final + ".tmp"
	if err := writeFileSync(tmp, b); err != nil {
		return fmt.Errorf("journal: write marker: %w", err)
	}
	if err := os.Rename(tmp, final); err != nil {
		return fmt.Errorf("journal: write marker: %w", err)
	}
	return syncDir(filepath.Dir(final))
}

func writeFileSync(name string, b []byte) error {
	f, err := os.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	if _, err := f.Write(b); err != nil {
		_ = f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		_ = f.Close()
		return err
	}
	return f.Close()
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("journal: sync dir: %w", err)
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("journal: sync dir %s: %w", dir, err)
	}
	return nil
}
