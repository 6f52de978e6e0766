package rotation

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/kms-plugin/kms-plugin/rotation/migrate"
)

// Step is one step of the procedure.
type Step string

// The steps, in order.
const (
	StepAdd        Step = "add-key"
	StepPromote    Step = "promote-key"
	StepPlugins    Step = "wait-plugins"
	StepAPIServers Step = "wait-apiservers"
	StepMigrate    Step = "migrate"
	StepVerify     Step = "verify"
	StepRetire     Step = "retire"
)

// Steps lists every step in order.
var Steps = []Step{StepAdd, StepPromote, StepPlugins, StepAPIServers, StepMigrate, StepVerify, StepRetire}

// ParseStep checks a step name.
func ParseStep(s string) (Step, error) {
	if s == "" || slices.Contains(Steps, Step(s)) {
		return Step(s), nil
	}
	return "", fmt.Errorf("unknown step %q; steps are %v", s, Steps)
}

// StepRecord is what the state file says about one step.
type StepRecord struct {
	Done bool      `json:"done"`
	At   time.Time `json:"at"`
	Note string    `json:"note,omitempty"`
}

// State is a rotation in progress, saved after every step.
type State struct {
	Format    int                 `json:"format"`
	Backend   string              `json:"backend"`
	Resources []string            `json:"resources"`
	Old       KeyVersion          `json:"old"`
	New       *KeyVersion         `json:"new,omitempty"`
	Steps     map[Step]StepRecord `json:"steps"`
	Started   time.Time           `json:"started"`
	Updated   time.Time           `json:"updated"`
	LastError string              `json:"last_error,omitempty"`
}

const stateFormat = 1

// StatePath is the state file in dir.
func StatePath(dir string) string { return filepath.Join(dir, "state.json") }

// LoadState reads the state in dir; ok is false when there is none.
func LoadState(dir string) (s *State, ok bool, err error) {
	b, err := os.ReadFile(StatePath(dir))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, false, nil
	}
	if err != nil {
		return nil, false, fmt.Errorf("read rotation state: %w", err)
	}
	s = &State{}
	if err := json.Unmarshal(b, s); err != nil {
		return nil, false, fmt.Errorf("parse rotation state %s: %w", StatePath(dir), err)
	}
	if s.Format != stateFormat {
		return nil, false, fmt.Errorf("rotation state %s has format %d, want %d", StatePath(dir), s.Format, stateFormat)
	}
	if s.Steps == nil {
		s.Steps = map[Step]StepRecord{}
	}
	return s, true, nil
}

// Save writes s to dir atomically.
func (s *State) Save(dir string) error {
	s.Updated = time.Now().UTC()
	b, err := json.MarshalIndent(s, "", "  ")
	if err != nil {
		return err
	}
	return migrate.WriteFileAtomic(StatePath(dir), append(b, '\n'))
}

// Done reports whether step is recorded as done.
func (s *State) Done(step Step) bool { return s.Steps[step].Done }

func (s *State) mark(step Step, note string) {
	s.Steps[step] = StepRecord{Done: true, At: time.Now().UTC(), Note: note}
}

func (s *State) undo(step Step) { delete(s.Steps, step) }

// Summary is a few lines on where the rotation stands.
func (s *State) Summary() string {
	newID := "(not added yet)"
	if s.New != nil {
		newID = s.New.KeyID
	}
	out := fmt.Sprintf("  backend: %s\n  old key: %s\n  new key: %s\n", s.Backend, s.Old.KeyID, newID)
	for _, st := range Steps {
		mark := "[ ]"
		if r := s.Steps[st]; r.Done {
			mark = "[x]"
		}
		out += fmt.Sprintf("  %s %s\n", mark, st)
	}
	return out
}
