package bench

import (
	"errors"
	"fmt"
	"slices"
	"time"
)

// Ratio summarises one figure's ratio target/baseline over several rounds.
type Ratio struct {
	Median float64 `json:"median"`
	Min    float64 `json:"min"`
	Max    float64 `json:"max"`
}

// Comparison is a target measured against a baseline in alternating rounds.
type Comparison struct {
	Target   []Result         `json:"target"`
	Baseline []Result         `json:"baseline"`
	Ratios   map[string]Ratio `json:"ratios"` // ops_per_sec, p50, p90, p99, max, and cpu_per_1000 when both sides were sampled
}

// Compare runs target and baseline in alternating rounds (baseline first in
// odd rounds, target first in even ones, so that drift in the machine's
// state hits both alike) and computes each figure's ratio per round.
func Compare(rounds int, target, baseline func() (Result, error)) (Comparison, error) {
	if rounds < 1 {
		return Comparison{}, errors.New("rounds must be at least 1")
	}
	var c Comparison
	for i := range rounds {
		targetFirst := i%2 == 1
		for j := range 2 {
			if (j == 0) == targetFirst {
				r, err := target()
				if err != nil {
					return Comparison{}, fmt.Errorf("round %d, target: %w", i+1, err)
				}
				c.Target = append(c.Target, r)
			} else {
				r, err := baseline()
				if err != nil {
					return Comparison{}, fmt.Errorf("round %d, baseline: %w", i+1, err)
				}
				c.Baseline = append(c.Baseline, r)
			}
		}
	}
	figures := map[string]func(Result) float64{
		"ops_per_sec": func(r Result) float64 { return r.OpsPerSec },
		"p50":         func(r Result) float64 { return seconds(r.P50) },
		"p90":         func(r Result) float64 { return seconds(r.P90) },
		"p99":         func(r Result) float64 { return seconds(r.P99) },
		"max":         func(r Result) float64 { return seconds(r.Max) },
	}
	if c.Target[0].CPUMsPer1000 > 0 && c.Baseline[0].CPUMsPer1000 > 0 {
		figures["cpu_per_1000"] = func(r Result) float64 { return r.CPUMsPer1000 }
	}
	c.Ratios = make(map[string]Ratio, len(figures))
	for name, f := range figures {
		var rs []float64
		for i := range c.Target {
			if b := f(c.Baseline[i]); b > 0 {
				rs = append(rs, f(c.Target[i])/b)
			}
		}
		c.Ratios[name] = summarise(rs)
	}
	return c, nil
}

func seconds(d time.Duration) float64 { return d.Seconds() }

func summarise(rs []float64) Ratio {
	if len(rs) == 0 {
		return Ratio{}
	}
	s := slices.Clone(rs)
	slices.Sort(s)
	med := s[len(s)/2]
	if len(s)%2 == 0 {
		med = (s[len(s)/2-1] + s[len(s)/2]) / 2
	}
	return Ratio{Median: med, Min: s[0], Max: s[len(s)-1]}
}
