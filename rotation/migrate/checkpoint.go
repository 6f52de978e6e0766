package migrate

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// Checkpoint is how far a rewrite of one resource got. It is saved after
// every page whose objects were all written, never before, so resuming
// from it may rewrite a page again (harmless) but never skips one.
type Checkpoint struct {
	Resource string `json:"resource"`
	// Continue is the list continue token of the next page to write; empty
	// with Done false means start from the beginning.
	Continue string `json:"continue,omitempty"`
	// Pages and Objects count what was written so far, across resumes.
	Pages   int64 `json:"pages"`
	Objects int64 `json:"objects"`
	// Done is set once the last page was written.
	Done      bool      `json:"done"`
	StartedAt time.Time `json:"started_at"`
	UpdatedAt time.Time `json:"updated_at"`
}

// checkpointPath is the file for resource in dir.
func checkpointPath(dir, resource string) string {
	name := strings.NewReplacer("/", "_", ":", "_").Replace(strings.TrimPrefix(resource, "/"))
	return filepath.Join(dir, name+".checkpoint.json")
}

// LoadCheckpoint reads the checkpoint of resource in dir; a missing file
// is a fresh Checkpoint.
func LoadCheckpoint(dir, resource string) (Checkpoint, error) {
	b, err := os.ReadFile(checkpointPath(dir, resource))
	if errors.Is(err, fs.ErrNotExist) {
		return Checkpoint{Resource: resource}, nil
	}
	if err != nil {
		return Checkpoint{}, fmt.Errorf("read checkpoint: %w", err)
	}
	var c Checkpoint
	if err := json.Unmarshal(b, &c); err != nil {
		return Checkpoint{}, fmt.Errorf("parse checkpoint %s: %w", checkpointPath(dir, resource), err)
	}
	if c.Resource != resource {
		return Checkpoint{}, fmt.Errorf("checkpoint %s is for resource %q, not %q", checkpointPath(dir, resource), c.Resource, resource)
	}
	return c, nil
}

// Save writes c to dir atomically: a temporary file, fsync, rename.
func (c Checkpoint) Save(dir string) error {
	c.UpdatedAt = time.Now().UTC()
	b, err := json.MarshalIndent(c, "", "  ")
	if err != nil {
		return err
	}
	return WriteFileAtomic(checkpointPath(dir, c.Resource), append(b, '\n'))
}

// WriteFileAtomic replaces path with data (mode 0600) so that a crash
// leaves the old content or the new, never a mix.
func WriteFileAtomic(path string, data []byte) error {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("create %s: %w", dir, err)
	}
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	tmp := f.Name()
	defer os.Remove(tmp) // no-op after the rename
	if _, err := f.Write(data); err != nil {
		f.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if d, err := os.Open(dir); err == nil {
		_ = d.Sync()
		d.Close()
	}
	return nil
}
