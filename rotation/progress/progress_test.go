package progress

import (
	"bytes"
	"strings"
	"testing"
	"time"
)

func TestLine(t *testing.T) {
	tests := []struct {
		done, total int64
		elapsed     time.Duration
		want        string
	}{
		{500, 1000, 2 * time.Second, "migrate: 500/1000 (50%), 250/s, ETA 2s"},
		{0, 1000, 0, "migrate: 0/1000 (0%), 0/s, ETA ?"},
		{300, 0, 3 * time.Second, "migrate: 300 done, 100/s, 3s elapsed"},
	}
	for _, tt := range tests {
		if got := Line("migrate", tt.done, tt.total, tt.elapsed); got != tt.want {
			t.Errorf("Line(%d, %d, %s) = %q, want %q", tt.done, tt.total, tt.elapsed, got, tt.want)
		}
	}
}

func TestMeterPlainLines(t *testing.T) {
	var b bytes.Buffer
	m := New(&b, "verify")
	m.SetTotal(3)
	m.Add(3)
	m.Done()
	if got := b.String(); !strings.HasPrefix(got, "verify: 3/3 (100%)") || strings.Contains(got, "\r") {
		t.Errorf("Meter on a non-terminal printed %q, want plain lines", got)
	}
}
