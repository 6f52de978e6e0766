package deploy_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/common/model"
	"github.com/prometheus/common/promslog"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/model/rulefmt"
	"github.com/prometheus/prometheus/promql/parser"
	"github.com/prometheus/prometheus/promql/promqltest"
	"github.com/prometheus/prometheus/rules"
	"sigs.k8s.io/yaml"

	"github.com/kms-plugin/kms-plugin/deploy/monitoring"
)

const (
	rulesFile     = "monitoring/kms-plugin.rules.yaml"
	rulesTestFile = "monitoring/kms-plugin.rules.test.yaml"
)

// The alerts that operators were promised, by what each watches.
var requiredAlerts = map[string]string{
	"KMSPluginDown":               "plugin down",
	"KMSPluginUnhealthy":          "backend unreachable",
	"KMSPluginDegraded":           "degraded",
	"KMSPluginBackendErrors":      "backend errors",
	"KMSPluginKeyTooOld":          "key older than the rotation policy",
	"KMSAPIServersKeyMismatch":    "apiservers on different key_id hashes",
	"KMSAPIServerNotOnPluginKey":  "an apiserver not on the plugin's key",
	"KMSPluginVaultTokenExpiring": "Vault token close to expiry",
}

// TestAlertRulesAreWellFormed parses the rules as Prometheus does and checks
// what every alert must carry: a known severity, a summary, a description,
// and a runbook link to a section that exists.
func TestAlertRulesAreWellFormed(t *testing.T) {
	groups, errs := rulefmt.ParseFile(rulesFile, false, model.UTF8Validation, parser.NewParser(parser.Options{}), promslog.NewNopLogger())
	for _, err := range errs {
		t.Errorf("%s: %v", rulesFile, err)
	}
	if groups == nil {
		t.Fatal("no rule groups")
	}
	ops, err := os.ReadFile("../docs/operations.md")
	if err != nil {
		t.Fatal(err)
	}
	anchors := markdownAnchors(string(ops))
	seen := map[string]bool{}
	for _, g := range groups.Groups {
		for _, r := range g.Rules {
			if r.Alert == "" {
				t.Errorf("rule %q is not an alert: the file holds alerts only", r.Record)
				continue
			}
			if seen[r.Alert] {
				t.Errorf("alert %s is defined twice", r.Alert)
			}
			seen[r.Alert] = true
			if s := r.Labels["severity"]; s != "critical" && s != "warning" {
				t.Errorf("%s: severity %q, want critical or warning", r.Alert, s)
			}
			for _, a := range []string{"summary", "description", "runbook_url"} {
				if r.Annotations[a] == "" {
					t.Errorf("%s: no %s annotation", r.Alert, a)
				}
			}
			const prefix = "https://github.com/kms-plugin/kms-plugin/blob/main/docs/operations.md#"
			anchor, ok := strings.CutPrefix(r.Annotations["runbook_url"], prefix)
			switch {
			case !ok:
				t.Errorf("%s: runbook_url %q does not point into docs/operations.md", r.Alert, r.Annotations["runbook_url"])
			case !anchors[anchor]:
				t.Errorf("%s: runbook_url names #%s, but docs/operations.md has no such heading", r.Alert, anchor)
			}
		}
	}
	for name, what := range requiredAlerts {
		if !seen[name] {
			t.Errorf("no %s alert (%s)", name, what)
		}
	}
}

// TestAlertRulesUnitTests runs kms-plugin.rules.test.yaml, a file in
// promtool's rule-test format, on Prometheus' own rule engine and PromQL
// test loader. Every alert must be shown firing by at least one case.
func TestAlertRulesUnitTests(t *testing.T) {
	file := readRuleTests(t, rulesTestFile)
	fired := map[string]bool{}
	for _, tc := range file.Tests {
		t.Run(tc.Name, func(t *testing.T) {
			runRuleTest(t, file, tc)
		})
		for _, at := range tc.AlertRuleTests {
			if len(at.ExpAlerts) > 0 {
				fired[at.Alertname] = true
			}
		}
	}
	groups, _ := rulefmt.ParseFile(rulesFile, false, model.UTF8Validation, parser.NewParser(parser.Options{}), promslog.NewNopLogger())
	if groups == nil {
		t.Fatal("rules do not parse")
	}
	for _, g := range groups.Groups {
		for _, r := range g.Rules {
			if r.Alert != "" && !fired[r.Alert] {
				t.Errorf("no test case shows %s firing", r.Alert)
			}
		}
	}
}

// TestRuleTestRunnerCatchesAWrongExpectation makes sure the runner above
// can fail: the same rules, with an expectation that is wrong on purpose.
func TestRuleTestRunnerCatchesAWrongExpectation(t *testing.T) {
	file := readRuleTests(t, rulesTestFile)
	tc := file.Tests[0]
	if len(tc.AlertRuleTests) == 0 {
		t.Fatal("the first test case has no alert expectations")
	}
	var last *alertTest
	for i := range tc.AlertRuleTests {
		if len(tc.AlertRuleTests[i].ExpAlerts) > 0 {
			last = &tc.AlertRuleTests[i]
		}
	}
	if last == nil {
		t.Fatal("the first test case expects no alert to fire")
	}
	last.ExpAlerts = nil
	rec := &recorder{TB: t}
	func() {
		defer func() {
			if r := recover(); r != nil && r != rec {
				panic(r)
			}
		}()
		runRuleTest(rec, file, tc)
	}()
	if !rec.failed {
		t.Error("a firing alert expected not to fire went unnoticed")
	}
}

// TestDashboard checks the Grafana dashboard's shape and that every query
// parses as PromQL. test/e2e checks every metric it names against what a
// real plugin and a real kube-apiserver export.
func TestDashboard(t *testing.T) {
	d, err := monitoring.ReadDashboard()
	if err != nil {
		t.Fatal(err)
	}
	if d.UID == "" || d.Title == "" {
		t.Errorf("dashboard uid %q, title %q: both needed", d.UID, d.Title)
	}
	ids := map[int]string{}
	queries := 0
	for _, p := range d.AllPanels() {
		if prev, dup := ids[p.ID]; dup {
			t.Errorf("panels %q and %q share id %d", prev, p.Title, p.ID)
		}
		ids[p.ID] = p.Title
		if p.Type == "row" {
			continue
		}
		if p.Title == "" || p.GridPos == nil {
			t.Errorf("panel %d: title %q, gridPos %v: both needed", p.ID, p.Title, p.GridPos)
		}
		if p.Datasource == nil || p.Datasource.UID != "${datasource}" {
			t.Errorf("panel %q does not use the ${datasource} variable", p.Title)
		}
		if len(p.Targets) == 0 {
			t.Errorf("panel %q has no query", p.Title)
		}
		for _, tg := range p.Targets {
			queries++
			if _, err := monitoring.MetricNames(tg.Expr); err != nil {
				t.Errorf("panel %q: %v", p.Title, err)
			}
		}
	}
	if queries < 10 {
		t.Errorf("%d queries; the dashboard looks empty", queries)
	}
	names, err := d.MetricNames()
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"kms_plugin_healthy", "kms_plugin_current_key_created_timestamp_seconds",
		"kms_plugin_vault_token_ttl_seconds", "apiserver_envelope_encryption_key_id_hash_status_last_timestamp_seconds",
	} {
		if !slices.Contains(names, want) {
			t.Errorf("the dashboard does not show %s", want)
		}
	}
}

// markdownAnchors returns the anchors GitHub makes for md's headings.
func markdownAnchors(md string) map[string]bool {
	anchors := map[string]bool{}
	drop := regexp.MustCompile(`[^a-z0-9 _-]`)
	for line := range strings.SplitSeq(md, "\n") {
		if h, ok := strings.CutPrefix(line, "#"); ok {
			h = strings.TrimLeft(h, "#")
			a := drop.ReplaceAllString(strings.ToLower(strings.TrimSpace(h)), "")
			anchors[strings.ReplaceAll(a, " ", "-")] = true
		}
	}
	return anchors
}

// The rule-test file format of `promtool test rules`, the part this
// repository uses. Unknown fields are refused, so the file stays one that
// promtool runs too.
type ruleTestFile struct {
	RuleFiles          []string   `json:"rule_files"`
	EvaluationInterval string     `json:"evaluation_interval"`
	Tests              []ruleTest `json:"tests"`
	dir                string
}

type ruleTest struct {
	Name           string        `json:"name"`
	Interval       string        `json:"interval"`
	StartTimestamp string        `json:"start_timestamp"`
	InputSeries    []inputSeries `json:"input_series"`
	AlertRuleTests []alertTest   `json:"alert_rule_test"`
}

type inputSeries struct {
	Series string `json:"series"`
	Values string `json:"values"`
}

type alertTest struct {
	EvalTime  string          `json:"eval_time"`
	Alertname string          `json:"alertname"`
	ExpAlerts []expectedAlert `json:"exp_alerts"`
}

type expectedAlert struct {
	ExpLabels      map[string]string `json:"exp_labels"`
	ExpAnnotations map[string]string `json:"exp_annotations"`
}

func readRuleTests(t testing.TB, path string) ruleTestFile {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var f ruleTestFile
	if err := yaml.UnmarshalStrict(b, &f); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	if len(f.Tests) == 0 || len(f.RuleFiles) == 0 {
		t.Fatalf("%s: %d tests on %d rule files: a test file that tests nothing", path, len(f.Tests), len(f.RuleFiles))
	}
	f.dir = filepath.Dir(path)
	return f
}

func mustDuration(t testing.TB, s, def string) time.Duration {
	t.Helper()
	if s == "" {
		s = def
	}
	d, err := model.ParseDuration(s)
	if err != nil {
		t.Fatalf("duration %q: %v", s, err)
	}
	return time.Duration(d)
}

// runRuleTest evaluates the rule files over tc's input series, one step
// of the evaluation interval at a time, and compares the firing alerts
// with the expectations at each eval_time, as promtool does.
func runRuleTest(t testing.TB, f ruleTestFile, tc ruleTest) {
	t.Helper()
	interval := mustDuration(t, tc.Interval, "1m")
	evalEvery := mustDuration(t, f.EvaluationInterval, "1m")
	start := time.Unix(0, 0).UTC()
	if tc.StartTimestamp != "" {
		sec, err := strconv.ParseInt(tc.StartTimestamp, 10, 64)
		if err != nil {
			t.Fatalf("start_timestamp %q: want Unix seconds", tc.StartTimestamp)
		}
		start = time.Unix(sec, 0).UTC()
	}
	var load strings.Builder
	fmt.Fprintf(&load, "load %s\n", model.Duration(interval))
	for _, s := range tc.InputSeries {
		fmt.Fprintf(&load, "  %s %s\n", s.Series, s.Values)
	}
	p := parser.NewParser(parser.Options{})
	suite, err := promqltest.NewLazyLoader(load.String(), promqltest.LazyLoaderOpts{
		EnableAtModifier: true, EnableNegativeOffset: true, StartTime: start, Parser: p,
	})
	if err != nil {
		t.Fatalf("input series: %v", err)
	}
	defer func() { _ = suite.Close() }()
	suite.SubqueryInterval = evalEvery

	m := rules.NewManager(&rules.ManagerOptions{
		QueryFunc:    rules.EngineQueryFunc(suite.QueryEngine(), suite.Storage()),
		AppendableV2: suite.Storage(),
		Context:      context.Background(),
		NotifyFunc:   func(context.Context, string, ...*rules.Alert) {},
		Logger:       promslog.NewNopLogger(),
		Parser:       p,
	})
	var files []string
	for _, rf := range f.RuleFiles {
		files = append(files, filepath.Join(f.dir, rf))
	}
	groupMap, errs := m.LoadGroups(evalEvery, labels.EmptyLabels(), "", nil, false, files...)
	for _, err := range errs {
		t.Fatalf("load rules: %v", err)
	}
	var groups []*rules.Group
	for _, g := range groupMap {
		groups = append(groups, g)
		for _, r := range g.Rules() {
			if ar, ok := r.(*rules.AlertingRule); ok {
				ar.SetRestored(true)
			}
		}
	}

	checks := map[time.Duration][]alertTest{}
	var last time.Duration
	for _, at := range tc.AlertRuleTests {
		d := mustDuration(t, at.EvalTime, "0s")
		checks[d] = append(checks[d], at)
		last = max(last, d)
	}
	for off := time.Duration(0); off <= last; off += evalEvery {
		ts := start.Add(off)
		suite.WithSamplesTill(ts, func(err error) {
			if err != nil {
				t.Fatalf("load samples till %s: %v", off, err)
			}
			for _, g := range groups {
				g.Eval(suite.Context(), ts)
				for _, r := range g.Rules() {
					if r.LastError() != nil {
						t.Fatalf("rule %s at %s: %v", r.Name(), off, r.LastError())
					}
				}
			}
		})
		// An eval_time between two evaluations sees the earlier one.
		for at, cases := range checks {
			if at < off || at >= off+evalEvery {
				continue
			}
			for _, c := range cases {
				got := firing(groups, c.Alertname)
				want := expected(c)
				if !slices.Equal(got, want) {
					t.Errorf("%s at %s:\n got  %q\n want %q", c.Alertname, c.EvalTime, got, want)
				}
			}
		}
	}
}

// firing returns the firing alerts of the rule named name, each as its
// labels and annotations in one sorted string.
func firing(groups []*rules.Group, name string) []string {
	var out []string
	for _, g := range groups {
		for _, r := range g.Rules() {
			ar, ok := r.(*rules.AlertingRule)
			if !ok || ar.Name() != name {
				continue
			}
			for _, a := range ar.ActiveAlerts() {
				if a.State == rules.StateFiring {
					out = append(out, a.Labels.String()+" "+a.Annotations.String())
				}
			}
		}
	}
	sort.Strings(out)
	return out
}

func expected(c alertTest) []string {
	var out []string
	for _, a := range c.ExpAlerts {
		l := map[string]string{labels.AlertName: c.Alertname}
		for k, v := range a.ExpLabels {
			l[k] = v
		}
		out = append(out, labels.FromMap(l).String()+" "+labels.FromMap(a.ExpAnnotations).String())
	}
	sort.Strings(out)
	return out
}

// recorder is a testing.TB that notes a failure instead of failing.
type recorder struct {
	testing.TB
	failed bool
}

func (r *recorder) Errorf(string, ...any) { r.failed = true }
func (r *recorder) Fatalf(string, ...any) { r.failed = true; panic(r) }
