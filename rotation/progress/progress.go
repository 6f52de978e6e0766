// Package progress prints a one-line progress report (count, rate, ETA) on
// a terminal or, less often, as plain lines in a log.
package progress

import (
	"fmt"
	"io"
	"os"
	"sync"
	"sync/atomic"
	"time"
)

// Meter counts work done and reports it on w at most every interval.
// Its methods are safe for concurrent use.
type Meter struct {
	w        io.Writer
	what     string
	tty      bool
	interval time.Duration
	start    time.Time

	done  atomic.Int64
	total atomic.Int64 // 0: unknown

	mu   sync.Mutex
	last time.Time
}

// New returns a Meter that labels its reports with what. On a terminal
// it redraws one line every 200 ms; elsewhere it prints a line every 5 s.
func New(w io.Writer, what string) *Meter {
	m := &Meter{w: w, what: what, interval: 5 * time.Second, start: time.Now()}
	if f, ok := w.(*os.File); ok {
		if st, err := f.Stat(); err == nil && st.Mode()&os.ModeCharDevice != 0 {
			m.tty, m.interval = true, 200*time.Millisecond
		}
	}
	m.last = m.start
	return m
}

// SetTotal sets how much work there is, once known; it enables the
// percentage and the ETA.
func (m *Meter) SetTotal(n int64) { m.total.Store(n) }

// Add records n more items done and reports if the interval has passed.
func (m *Meter) Add(n int64) {
	m.done.Add(n)
	m.mu.Lock()
	defer m.mu.Unlock()
	if now := time.Now(); now.Sub(m.last) >= m.interval {
		m.last = now
		m.print(now, false)
	}
}

// Done prints the final report.
func (m *Meter) Done() {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.print(time.Now(), true)
}

func (m *Meter) print(now time.Time, final bool) {
	if m.w == nil || m.w == io.Discard {
		return
	}
	line := Line(m.what, m.done.Load(), m.total.Load(), now.Sub(m.start))
	switch {
	case m.tty && final:
		fmt.Fprintf(m.w, "\r\033[K%s\n", line)
	case m.tty:
		fmt.Fprintf(m.w, "\r\033[K%s", line)
	default:
		fmt.Fprintln(m.w, line)
	}
}

// Line formats one report: "what: done/total (p%), r/s, ETA d".
func Line(what string, done, total int64, elapsed time.Duration) string {
	rate := 0.0
	if s := elapsed.Seconds(); s > 0 {
		rate = float64(done) / s
	}
	if total <= 0 {
		return fmt.Sprintf("%s: %d done, %.0f/s, %s elapsed", what, done, rate, elapsed.Round(time.Second))
	}
	eta := "?"
	if rate > 0 {
		left := max(total-done, 0)
		eta = time.Duration(float64(left) / rate * float64(time.Second)).Round(time.Second).String()
	}
	return fmt.Sprintf("%s: %d/%d (%d%%), %.0f/s, ETA %s", what, done, total, done*100/total, rate, eta)
}
