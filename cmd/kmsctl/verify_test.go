package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"strings"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/kms-plugin/kms-plugin/rotation/verify"
)

// fakeEtcd answers every range read with all its values at once.
type fakeEtcd map[string]string

func (f fakeEtcd) Get(_ context.Context, key string, _ ...clientv3.OpOption) (*clientv3.GetResponse, error) {
	resp := &clientv3.GetResponse{}
	for k, v := range f {
		if strings.HasPrefix(k, key) {
			resp.Kvs = append(resp.Kvs, &mvccpb.KeyValue{Key: []byte(k), Value: []byte(v)})
		}
	}
	return resp, nil
}

func TestRunVerifyJSON(t *testing.T) {
	kv := fakeEtcd{
		"/registry/secrets/ns/plain": "k8s\x00plain",
		"/registry/secrets/ns/aes":   "k8s:enc:aescbc:v1:key1:xx",
	}
	var out bytes.Buffer
	err := runVerify(context.Background(), kv, &out, io.Discard, verify.Options{Expect: verify.Expect{Providers: []string{"aescbc"}}}, "json", false)
	if !errors.Is(err, verify.ErrExpectation) {
		t.Errorf("runVerify() = %v, want ErrExpectation for the plaintext Secret", err)
	}
	var got struct {
		Objects []struct {
			Name      string `json:"name"`
			Type      string `json:"type"`
			Offending bool   `json:"offending"`
		} `json:"objects"`
		Total         int `json:"total"`
		OffenderCount int `json:"offender_count"`
	}
	if err := json.Unmarshal(out.Bytes(), &got); err != nil {
		t.Fatalf("verify -o json is not JSON: %v\n%s", err, out.String())
	}
	if got.Total != 2 || got.OffenderCount != 1 || len(got.Objects) != 2 {
		t.Errorf("verify -o json = %+v, want 2 objects, 1 offender", got)
	}
	for _, o := range got.Objects {
		if o.Offending != (o.Name == "plain") {
			t.Errorf("object %s (%s) offending = %v", o.Name, o.Type, o.Offending)
		}
	}

	out.Reset()
	if err := runVerify(context.Background(), fakeEtcd{}, &out, io.Discard, verify.Options{}, "json", false); err != nil {
		t.Fatal(err)
	}
	if !json.Valid(out.Bytes()) {
		t.Errorf("verify -o json with no objects is not JSON:\n%s", out.String())
	}
}

// TestVerifyOfNothingFails: a mistyped resource or --etcd-prefix makes
// verify check no object; that fails, naming what matched nothing, unless
// --allow-empty says it is expected.
func TestVerifyOfNothingFails(t *testing.T) {
	kv := fakeEtcd{"/registry/secrets/ns/s": "k8s:enc:kms:v2:kms-plugin:xx"}
	cases := []struct {
		name      string
		opts      verify.Options
		allow     bool
		wantError string
	}{
		{"mistyped resource", verify.Options{EtcdPrefix: "/registry", Resources: []string{"secretz"}, Expect: verify.Expect{Providers: []string{"kms-plugin"}}}, false, "secretz"},
		{"one of two empty", verify.Options{EtcdPrefix: "/registry", Resources: []string{"secrets", "configmapz"}}, false, "configmapz"},
		{"wrong prefix", verify.Options{EtcdPrefix: "/registri", Resources: []string{"secrets"}}, false, "/registri"},
		{"allowed", verify.Options{EtcdPrefix: "/registry", Resources: []string{"secretz"}}, true, ""},
		{"found", verify.Options{EtcdPrefix: "/registry", Resources: []string{"secrets"}}, false, ""},
	}
	for _, c := range cases {
		var out, errOut bytes.Buffer
		err := runVerify(context.Background(), kv, &out, &errOut, c.opts, "table", c.allow)
		switch {
		case c.wantError == "" && err != nil:
			t.Errorf("%s: runVerify() = %v, want success", c.name, err)
		case c.wantError != "" && (err == nil || !strings.Contains(err.Error(), c.wantError) || !strings.Contains(err.Error(), "--allow-empty")):
			t.Errorf("%s: runVerify() = %v, want an error naming %q and --allow-empty", c.name, err, c.wantError)
		}
	}
}

// TestEtcdUnreachableFailsFast: the etcd client connects lazily; kmsctl
// probes first and fails within --dial-timeout, naming the address.
func TestEtcdUnreachableFailsFast(t *testing.T) {
	f := etcdFlags{endpoints: []string{"127.0.0.1:1"}, dialTimeout: 500 * time.Millisecond, prefix: "/registry"}
	done := make(chan error, 1)
	go func() {
		c, err := f.client()
		if c != nil {
			_ = c.Close()
		}
		done <- err
	}()
	select {
	case err := <-done:
		if err == nil || !strings.Contains(err.Error(), "cannot reach etcd at 127.0.0.1:1") {
			t.Errorf("client() = %v, want it to say etcd at 127.0.0.1:1 cannot be reached", err)
		}
	case <-time.After(time.Minute):
		t.Fatal("client() hangs on an unreachable etcd")
	}
}
