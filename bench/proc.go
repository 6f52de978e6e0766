package bench

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"
)

// ProcSample is what Linux's /proc says about a process at one instant.
type ProcSample struct {
	CPU    time.Duration // user + system time so far
	RSSKB  int64         // resident set now
	PeakKB int64         // peak resident set so far (VmHWM)
}

// SampleProc reads /proc/<pid>/stat and /proc/<pid>/status. Both are
// readable for any process of any user, so kmsctl can sample a plugin
// that runs as another user.
func SampleProc(pid int) (ProcSample, error) {
	var s ProcSample
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return s, fmt.Errorf("read the CPU time of process %d: %w", pid, err)
	}
	// The command name, field 2, may hold spaces and parentheses; the
	// fields after it start after its last ')'.
	i := strings.LastIndexByte(string(b), ')')
	if i < 0 || i+2 > len(b) {
		return s, fmt.Errorf("parse /proc/%d/stat", pid)
	}
	f := strings.Fields(string(b[i+2:]))
	if len(f) < 13 {
		return s, fmt.Errorf("parse /proc/%d/stat", pid)
	}
	utime, err1 := strconv.ParseInt(f[11], 10, 64) // field 14
	stime, err2 := strconv.ParseInt(f[12], 10, 64) // field 15
	if err1 != nil || err2 != nil {
		return s, fmt.Errorf("parse /proc/%d/stat", pid)
	}
	const ticksPerSecond = 100 // USER_HZ on Linux
	s.CPU = time.Duration(utime+stime) * time.Second / ticksPerSecond
	b, err = os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return s, fmt.Errorf("read the memory use of process %d: %w", pid, err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		k, v, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		kb, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
		switch k {
		case "VmRSS":
			s.RSSKB = kb
		case "VmHWM":
			s.PeakKB = kb
		}
	}
	return s, nil
}

// CPUPer1000 is the CPU time in milliseconds that a process spent per 1000
// calls between two samples. Warm-up calls burn CPU too, so calls counts
// every call made between the samples.
func CPUPer1000(before, after ProcSample, calls float64) float64 {
	if calls <= 0 {
		return 0
	}
	return float64(after.CPU-before.CPU) / float64(time.Millisecond) / calls * 1000
}
