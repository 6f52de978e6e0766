package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"strings"
	"testing"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/kms-plugin/kms-plugin/rotation/audit"
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
	err := runVerify(context.Background(), kv, &out, io.Discard, audit.Options{Expect: audit.Expect{Providers: []string{"aescbc"}}}, "json")
	if !errors.Is(err, audit.ErrExpectation) {
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
	if err := runVerify(context.Background(), fakeEtcd{}, &out, io.Discard, audit.Options{}, "json"); err != nil {
		t.Fatal(err)
	}
	if !json.Valid(out.Bytes()) {
		t.Errorf("verify -o json with no objects is not JSON:\n%s", out.String())
	}
}
