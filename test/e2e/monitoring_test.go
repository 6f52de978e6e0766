//go:build e2e

package e2e

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/kms-plugin/kms-plugin/deploy/monitoring"
	"github.com/kms-plugin/kms-plugin/test/cluster"
)

// TestMonitoringNamesExportedMetrics checks every metric that a shipped
// alert rule or dashboard query names (deploy/monitoring) against what real
// components export: kube-apiserver, and kms-plugin on the local keyring
// and on Vault, after a Secret went through them. A renamed metric, or a
// query with a typo, fails here instead of leaving an alert that can never
// fire.
func TestMonitoringNamesExportedMetrics(t *testing.T) {
	if cluster.UsesExistingCluster() {
		t.Skip("needs a local cluster: it runs kms-plugin on a Vault the test starts")
	}
	v := startVault(t)
	c := cluster.Start(t, cluster.Options{
		Plugins: []cluster.PluginSpec{cluster.LocalPlugin(t, "kms-plugin", "kms.sock"), v.plugin()},
	})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()

	ns := c.Namespace(t)
	s := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "monitored"}, Data: map[string][]byte{"k": secretValue(t)}}
	if _, err := c.Client.CoreV1().Secrets(ns).Create(ctx, s, metav1.CreateOptions{}); err != nil {
		t.Fatalf("create secret: %v", err)
	}

	used := map[string][]string{} // metric name -> where it is used
	ruleNames, err := monitoring.RuleMetricNames()
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range ruleNames {
		used[n] = append(used[n], "kms-plugin.rules.yaml")
	}
	d, err := monitoring.ReadDashboard()
	if err != nil {
		t.Fatal(err)
	}
	dashNames, err := d.MetricNames()
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range dashNames {
		used[n] = append(used[n], "kms-plugin-dashboard.json")
	}
	if len(ruleNames) < 8 || len(dashNames) < 15 {
		t.Fatalf("the rules name %d metrics and the dashboard %d: too few to be the shipped files", len(ruleNames), len(dashNames))
	}

	// kube-apiserver records its Status polls and calls as they happen;
	// poll until every name shows or the time is up.
	var missing []string
	err = cluster.Poll(ctx, 2*time.Second, 2*time.Minute, "every metric the rules and the dashboard name to be exported", func(ctx context.Context) (bool, error) {
		exported := map[string]bool{
			// Prometheus' own series for each target it scrapes.
			"up": true,
		}
		mfs, err := c.Metrics(ctx)
		if err != nil {
			return false, nil
		}
		addNames(exported, mfs)
		for _, p := range c.Plugins() {
			mfs, err := p.Metrics(ctx)
			if err != nil {
				return false, err
			}
			addNames(exported, mfs)
		}
		missing = missing[:0]
		for n := range used {
			if !exported[n] {
				missing = append(missing, fmt.Sprintf("%s (in %s)", n, strings.Join(slices.Compact(used[n]), ", ")))
			}
		}
		return len(missing) == 0, nil
	})
	if err != nil {
		slices.Sort(missing)
		t.Fatalf("%v; not exported by kube-apiserver or kms-plugin:\n  %s", err, strings.Join(missing, "\n  "))
	}
	t.Logf("%d metric names used by the rules and the dashboard, all exported", len(used))

	// The key-age alert reads the current key's creation time, which each
	// backend must give: a 0 would leave the alert silent for ever.
	for _, p := range c.Plugins() {
		mfs, err := p.Metrics(ctx)
		if err != nil {
			t.Fatal(err)
		}
		created, ok := cluster.MetricValue(mfs, "kms_plugin_current_key_created_timestamp_seconds", nil)
		age := time.Since(time.Unix(int64(created), 0))
		if !ok || age < -time.Minute || age > time.Hour {
			t.Errorf("plugin %s: kms_plugin_current_key_created_timestamp_seconds = %v (%v ago); want the creation time of a key made by this test", p.Name, created, age)
		}
	}
}

// addNames adds the sample names of mfs to names: a histogram's _bucket,
// _sum and _count, a summary's quantiles, _sum and _count.
func addNames(names map[string]bool, mfs map[string]*dto.MetricFamily) {
	for name, mf := range mfs {
		if len(mf.GetMetric()) == 0 {
			continue
		}
		switch mf.GetType() {
		case dto.MetricType_HISTOGRAM, dto.MetricType_GAUGE_HISTOGRAM:
			names[name+"_bucket"], names[name+"_sum"], names[name+"_count"] = true, true, true
		case dto.MetricType_SUMMARY:
			names[name], names[name+"_sum"], names[name+"_count"] = true, true, true
		default:
			names[name] = true
		}
	}
}
