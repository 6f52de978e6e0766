// Package monitoring holds kms-plugin's Prometheus alert rules and Grafana
// dashboard, as shipped in this directory, and reads the metric names their
// queries use, so that tests can hold them to what the plugin and
// kube-apiserver really export.
package monitoring

import (
	_ "embed"
	"encoding/json"
	"fmt"
	"log/slog"
	"regexp"
	"slices"

	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/model/rulefmt"
	"github.com/prometheus/prometheus/promql/parser"
)

//go:embed kms-plugin-dashboard.json
var dashboardJSON []byte

//go:embed kms-plugin.rules.yaml
var rulesYAML []byte

// Dashboard is the part of a Grafana dashboard that the tests read.
type Dashboard struct {
	UID    string  `json:"uid"`
	Title  string  `json:"title"`
	Panels []Panel `json:"panels"`
}

// Panel is one Grafana panel; a row panel may hold others.
type Panel struct {
	ID         int             `json:"id"`
	Type       string          `json:"type"`
	Title      string          `json:"title"`
	GridPos    *map[string]int `json:"gridPos"`
	Datasource *struct {
		UID string `json:"uid"`
	} `json:"datasource"`
	Targets []struct {
		Expr string `json:"expr"`
	} `json:"targets"`
	Panels []Panel `json:"panels"`
}

// ReadDashboard parses the shipped dashboard.
func ReadDashboard() (*Dashboard, error) {
	var d Dashboard
	if err := json.Unmarshal(dashboardJSON, &d); err != nil {
		return nil, fmt.Errorf("kms-plugin-dashboard.json: %w", err)
	}
	return &d, nil
}

// AllPanels returns every panel, those inside rows included.
func (d *Dashboard) AllPanels() []Panel {
	var out []Panel
	var walk func([]Panel)
	walk = func(ps []Panel) {
		for _, p := range ps {
			out = append(out, p)
			walk(p.Panels)
		}
	}
	walk(d.Panels)
	return out
}

// MetricNames returns the sorted metric names that the dashboard's queries
// select.
func (d *Dashboard) MetricNames() ([]string, error) {
	var exprs []string
	for _, p := range d.AllPanels() {
		for _, t := range p.Targets {
			exprs = append(exprs, t.Expr)
		}
	}
	return namesOf(exprs)
}

// RuleExprs returns the expression of every shipped alert rule, by name.
func RuleExprs() (map[string]string, error) {
	groups, errs := rulefmt.Parse(rulesYAML, false, model.UTF8Validation, parser.NewParser(parser.Options{}), slog.New(slog.DiscardHandler))
	if len(errs) > 0 {
		return nil, fmt.Errorf("kms-plugin.rules.yaml: %w", errs[0])
	}
	out := map[string]string{}
	for _, g := range groups.Groups {
		for _, r := range g.Rules {
			out[r.Alert+r.Record] = r.Expr
		}
	}
	return out, nil
}

// RuleMetricNames returns the sorted metric names that the shipped alert
// rules select.
func RuleMetricNames() ([]string, error) {
	rules, err := RuleExprs()
	if err != nil {
		return nil, err
	}
	var exprs []string
	for _, e := range rules {
		exprs = append(exprs, e)
	}
	return namesOf(exprs)
}

func namesOf(exprs []string) ([]string, error) {
	var names []string
	for _, e := range exprs {
		n, err := MetricNames(e)
		if err != nil {
			return nil, err
		}
		names = append(names, n...)
	}
	slices.Sort(names)
	return slices.Compact(names), nil
}

// grafanaVariable matches $name, ${name} and ${name:format}.
var grafanaVariable = regexp.MustCompile(`\$\{?(\w+)(:\w+)?\}?`)

// MetricNames parses a PromQL query, Grafana's variables allowed, and
// returns the metric names its selectors name. A selector without a name
// is an error: every query must say which metric it reads.
func MetricNames(expr string) ([]string, error) {
	q := grafanaVariable.ReplaceAllStringFunc(expr, func(v string) string {
		name := grafanaVariable.FindStringSubmatch(v)[1]
		switch name {
		case "__rate_interval", "__interval", "__range":
			return "5m"
		default:
			return "x"
		}
	})
	e, err := parser.NewParser(parser.Options{}).ParseExpr(q)
	if err != nil {
		return nil, fmt.Errorf("query %q: %w", expr, err)
	}
	var names []string
	var bad error
	parser.Inspect(e, func(n parser.Node, _ []parser.Node) error {
		vs, ok := n.(*parser.VectorSelector)
		if !ok {
			return nil
		}
		name := vs.Name
		for _, m := range vs.LabelMatchers {
			if m.Name == model.MetricNameLabel && m.Type == labels.MatchEqual {
				name = m.Value
			}
		}
		if name == "" {
			bad = fmt.Errorf("query %q: a selector names no metric", expr)
		}
		names = append(names, name)
		return nil
	})
	if bad != nil {
		return nil, bad
	}
	return names, nil
}
