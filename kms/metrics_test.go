package kms

import (
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

func TestKeyIDHashIsKubeAPIServers(t *testing.T) {
	// kube-apiserver's own test vectors (k8s.io/apiserver envelope metrics):
	// the key_ids "1" and "2".
	for id, want := range map[string]string{
		"1": "sha256:6b86b273ff34fce19d6b804eff5a3f5747ada4eaa22f1d49c01e52ddb7875b4b",
		"2": "sha256:d4735e3a265e16eee03f59718b9b5d03019c07d8b6c51f90da3a666eec13ab35",
		"":  "",
	} {
		if got := KeyIDHash(id); got != want {
			t.Errorf("KeyIDHash(%q) = %q, want %q", id, got, want)
		}
	}
}

func TestStatusCacheAgeAndKeyHashFollowTheProbe(t *testing.T) {
	reg := prometheus.NewRegistry()
	m := NewMetrics(reg, "local")
	value := func(name string) (float64, map[string]string) {
		mfs, err := reg.Gather()
		if err != nil {
			t.Fatal(err)
		}
		for _, mf := range mfs {
			if mf.GetName() == name && len(mf.GetMetric()) > 0 {
				labels := map[string]string{}
				for _, l := range mf.GetMetric()[0].GetLabel() {
					labels[l.GetName()] = l.GetValue()
				}
				return mf.GetMetric()[0].GetGauge().GetValue(), labels
			}
		}
		return 0, nil
	}
	if age, _ := value("kms_plugin_status_cache_age_seconds"); age != -1 {
		t.Errorf("cache age before the first probe = %v, want -1", age)
	}
	m.setHealth(Probe{KeyID: "k1", At: time.Now().Add(-3 * time.Second)})
	if age, _ := value("kms_plugin_status_cache_age_seconds"); age < 3 || age > 60 {
		t.Errorf("cache age 3 s after a probe = %v", age)
	}
	m.setHealth(Probe{KeyID: "k2", At: time.Now()})
	if v, l := value("kms_plugin_current_key_id_hash_info"); v != 1 || l["key_id_hash"] != KeyIDHash("k2") {
		t.Errorf("key hash series = %v %v, want only k2's", v, l)
	}
	if v, _ := value("kms_plugin_current_key_created_timestamp_seconds"); v != 0 {
		t.Errorf("key creation time before any backend said it = %v, want 0", v)
	}
	created := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	m.setHealth(Probe{KeyID: "k3", KeyCreated: created, At: time.Now()})
	if v, _ := value("kms_plugin_current_key_created_timestamp_seconds"); v != float64(created.Unix()) {
		t.Errorf("key creation time = %v, want %v", v, created.Unix())
	}
}
