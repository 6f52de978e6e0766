//go:build e2e

package e2e

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/kms-plugin/kms-plugin/test/cluster"
)

// TestAPIServerRestart checks that every Secret reads after kube-apiserver
// restarts, and that the new process got its DEK seeds back by calling the
// plugin's Decrypt (its DEK cache starts empty).
func TestAPIServerRestart(t *testing.T) {
	c := cluster.Start(t, cluster.Options{})
	if !c.CanRestartAPIServer() {
		t.Skip("this cluster has no way to restart kube-apiserver (set KMS_E2E_RESTART_APISERVER)")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	checkAPIServerRestart(ctx, t, c, c.Namespace(t))
}

// checkAPIServerRestart is check 4 of the end-to-end suite for any provider.
func checkAPIServerRestart(ctx context.Context, t *testing.T, c *cluster.Cluster, ns string) {
	keyID, err := c.KeyID(ctx)
	if err != nil {
		t.Fatal(err)
	}
	values := map[string][]byte{}
	for i := range 30 {
		name := fmt.Sprintf("restart-%d", i)
		values[name] = secretValue(t)
		createSecret(ctx, t, c, ns, name, values[name])
		checkEncrypted(ctx, t, c, "secrets", ns, name, values[name], keyID)
	}

	if err := c.RestartAPIServer(ctx); err != nil {
		t.Fatal(err)
	}

	for name, value := range values {
		checkSecretReads(ctx, t, c, ns, name, value)
	}

	// The restarted process's own metrics count the KMS calls it made.
	mfs, err := c.Metrics(ctx)
	if err != nil {
		t.Fatal(err)
	}
	const metric = "apiserver_envelope_encryption_kms_operations_latency_seconds"
	method := "/v2.KeyManagementService/Decrypt"
	decrypts, _ := cluster.MetricValue(mfs, metric, map[string]string{"provider_name": c.ProviderName, "method_name": method, "grpc_status_code": "OK"})
	if decrypts == 0 {
		t.Fatalf("restarted kube-apiserver reports no successful %s to provider %q (%s)", method, c.ProviderName, metric)
	}
	t.Logf("restarted kube-apiserver: %d secrets read back, %v successful Decrypt calls to the plugin", len(values), decrypts)
}
