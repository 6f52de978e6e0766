package rotation

import (
	"context"
	"fmt"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/kms-plugin/kms-plugin/rotation/verify"
)

// Canary proves which key one kube-apiserver encrypts new writes with: it
// writes a small Secret through that apiserver and reads the key_id stored
// with it from etcd.
type Canary struct {
	// APIServer names the apiserver in messages (its URL).
	APIServer string
	Client    kubernetes.Interface
	Namespace string
	Name      string
	Etcd      verify.KV
	// EtcdPrefix is kube-apiserver's --etcd-prefix.
	EtcdPrefix string
}

// Write nudges the apiserver to call Status (GET /healthz/kms-providers
// does once its health cache lapses, instead of waiting for the 60 s
// poll), writes the canary with new content, and returns how etcd stores
// it.
func (c *Canary) Write(ctx context.Context) (verify.Class, error) {
	_, _ = c.Client.CoreV1().RESTClient().Get().AbsPath("/healthz/kms-providers").DoRaw(ctx)
	secrets := c.Client.CoreV1().Secrets(c.Namespace)
	stamp := []byte(time.Now().UTC().Format(time.RFC3339Nano))
	s, err := secrets.Get(ctx, c.Name, metav1.GetOptions{})
	switch {
	case apierrors.IsNotFound(err):
		_, err = secrets.Create(ctx, &corev1.Secret{
			ObjectMeta: metav1.ObjectMeta{Name: c.Name, Labels: map[string]string{"app.kubernetes.io/managed-by": "kmsctl-rotate"}},
			Data:       map[string][]byte{"written": stamp},
		}, metav1.CreateOptions{})
	case err == nil:
		if s.Data == nil {
			s.Data = map[string][]byte{}
		}
		s.Data["written"] = stamp
		_, err = secrets.Update(ctx, s, metav1.UpdateOptions{})
	}
	if err != nil {
		return verify.Class{}, fmt.Errorf("write canary secret %s/%s through %s: %w", c.Namespace, c.Name, c.APIServer, err)
	}
	key := strings.TrimSuffix(c.EtcdPrefix, "/") + "/secrets/" + c.Namespace + "/" + c.Name
	resp, err := c.Etcd.Get(ctx, key)
	if err != nil {
		return verify.Class{}, fmt.Errorf("read canary from etcd: %w", err)
	}
	if len(resp.Kvs) != 1 {
		return verify.Class{}, fmt.Errorf("read canary from etcd: %s not found", key)
	}
	return verify.Classify(resp.Kvs[0].Value), nil
}

// Delete removes the canary.
func (c *Canary) Delete(ctx context.Context) error {
	err := c.Client.CoreV1().Secrets(c.Namespace).Delete(ctx, c.Name, metav1.DeleteOptions{})
	if err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("delete canary secret %s/%s: %w", c.Namespace, c.Name, err)
	}
	return nil
}
