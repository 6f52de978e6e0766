//go:build e2e

package e2e

import (
	"context"
	"strings"
	"testing"
)

// testVerifyDetects: with the bulk Secrets under key A, one plaintext
// Secret, and kube-apiserver on key B, kmsctl verify --expect-key-id B
// exits non-zero and names both kinds of offender; accepting A as well
// leaves only the plaintext one.
func testVerifyDetects(ctx context.Context, t *testing.T, e *rotationEnv) {
	keyA, keyB := e.keys[0], e.keys[1]

	v, ok := e.verify(ctx, t, "--expect-key-id", keyB)
	if ok {
		t.Fatalf("kmsctl verify --expect-key-id %s exited 0 with %d old-key and plaintext Secrets in etcd", keyB, e.count)
	}
	offenders := map[string]string{} // namespace/name -> type key_id
	for _, o := range v.Objects {
		if o.Offending {
			offenders[o.Namespace+"/"+o.Name] = o.Type + " " + o.KeyID
		}
	}
	if got, want := offenders[e.plainNS+"/plain"], "identity "; got != want {
		t.Errorf("verify -o json: plaintext Secret %s/plain offending as %q, want %q", e.plainNS, got, want)
	}
	if got, want := offenders[e.ns+"/"+secretName(0)], "kms-v2 "+keyA; got != want {
		t.Errorf("verify -o json: old-key Secret %s/%s offending as %q, want %q", e.ns, secretName(0), got, want)
	}
	if v.OffenderCount != int64(e.count+1) || int64(len(offenders)) != v.OffenderCount {
		t.Errorf("verify -o json: offender_count %d with %d objects marked offending, want %d (the bulk Secrets and the plaintext one)",
			v.OffenderCount, len(offenders), e.count+1)
	}
	var underA int64
	for _, s := range v.Summary {
		if s.KeyID == keyA {
			underA += s.Objects
		}
	}
	if underA != int64(e.count) {
		t.Errorf("verify summary: %d objects under %s, want %d", underA, keyA, e.count)
	}

	// The table output and the error name the offenders too.
	r := e.kmsctl(ctx, e.verifyArgs("--expect-key-id", keyB, "--max-offenders", "5000", "--page-size", "100")...)
	if r.Err == nil {
		t.Fatalf("kmsctl verify (table) exited 0:\n%s", r)
	}
	for _, want := range []string{
		"secrets " + e.plainNS + "/plain (identity (protobuf))",
		"secrets " + e.ns + "/" + secretName(0) + " (kms-v2 " + e.c.ProviderName + " " + keyA + ")",
	} {
		if !strings.Contains(r.Stderr, want) {
			t.Errorf("kmsctl verify does not name %q:\n%s", want, r)
		}
	}
	if !strings.Contains(r.Stdout, "RESOURCE") || !strings.Contains(r.Stdout, keyA) {
		t.Errorf("kmsctl verify table lacks the summary:\n%s", r.Stdout)
	}

	// Both keys accepted: only the plaintext Secret is left.
	v, ok = e.verify(ctx, t, "--expect-key-id", keyA+","+keyB, "--expect-provider", e.c.ProviderName)
	if ok || v.OffenderCount != 1 {
		t.Errorf("verify accepting %s and %s: exit 0 = %v, %d offenders; want a failure naming only the plaintext Secret", keyA, keyB, ok, v.OffenderCount)
	}
}
