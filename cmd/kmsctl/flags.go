package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"go.etcd.io/etcd/client/pkg/v3/transport"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc/status"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/kms-plugin/kms-plugin/kms/contract"
	"github.com/kms-plugin/kms-plugin/providers/vault"
	"github.com/kms-plugin/kms-plugin/rotation/encryptionconfig"
)

// The flags that several kmsctl commands share, each defined once: the
// plugin's endpoint, kubectl's, etcdctl's and the plugin's Vault
// connection flags, and the choice of resources.

// addEndpointFlag adds --endpoint, the socket of the plugin to talk to.
func addEndpointFlag(fs *pflag.FlagSet, endpoint *string) {
	fs.StringVar(endpoint, "endpoint", contract.DefaultEndpoint, "plugin endpoint: unix:///path or unix:///@name")
}

// kubeFlags are kubectl's connection flags.
type kubeFlags struct {
	kubeconfig string
	context    string
	timeout    time.Duration
}

func (f *kubeFlags) register(cmd *cobra.Command) {
	cmd.Flags().StringVar(&f.kubeconfig, "kubeconfig", "", "kubeconfig file (default: $KUBECONFIG or ~/.kube/config)")
	cmd.Flags().StringVar(&f.context, "context", "", "kubeconfig context (default: the current one)")
	cmd.Flags().DurationVar(&f.timeout, "request-timeout", 30*time.Second, "timeout of one API request")
}

// restConfig loads the kubeconfig. Client-side throttling is off: the
// commands apply their own --qps.
func (f *kubeFlags) restConfig() (*rest.Config, error) {
	rules := clientcmd.NewDefaultClientConfigLoadingRules()
	rules.ExplicitPath = f.kubeconfig
	cfg, err := clientcmd.NewNonInteractiveDeferredLoadingClientConfig(rules,
		&clientcmd.ConfigOverrides{CurrentContext: f.context}).ClientConfig()
	if clientcmd.IsEmptyConfig(err) {
		// client-go's own message points at the obsolete KUBERNETES_MASTER.
		return nil, errors.New("no kubeconfig found: pass --kubeconfig (on a control-plane node, /etc/kubernetes/admin.conf) or set KUBECONFIG")
	}
	if err != nil {
		return nil, fmt.Errorf("load kubeconfig: %w", err)
	}
	cfg.QPS, cfg.Burst, cfg.Timeout = -1, 0, f.timeout
	cfg.UserAgent = "kmsctl"
	return cfg, nil
}

// etcdFlags are etcdctl's connection flags; ETCDCTL_* variables are the
// defaults, as for etcdctl.
type etcdFlags struct {
	endpoints   []string
	cacert      string
	cert        string
	key         string
	dialTimeout time.Duration
	prefix      string
}

func (f *etcdFlags) register(cmd *cobra.Command) {
	endpoints := []string{"127.0.0.1:2379"}
	if v := os.Getenv("ETCDCTL_ENDPOINTS"); v != "" {
		endpoints = strings.Split(v, ",")
	}
	fs := cmd.Flags()
	fs.StringSliceVar(&f.endpoints, "endpoints", endpoints, "etcd endpoints (env ETCDCTL_ENDPOINTS)")
	fs.StringVar(&f.cacert, "cacert", os.Getenv("ETCDCTL_CACERT"), "CA bundle that verifies etcd's certificate (env ETCDCTL_CACERT)")
	fs.StringVar(&f.cert, "cert", os.Getenv("ETCDCTL_CERT"), "client certificate for etcd (env ETCDCTL_CERT)")
	fs.StringVar(&f.key, "key", os.Getenv("ETCDCTL_KEY"), "client key for etcd (env ETCDCTL_KEY)")
	fs.DurationVar(&f.dialTimeout, "dial-timeout", 5*time.Second, "timeout to connect to etcd")
	fs.StringVar(&f.prefix, "etcd-prefix", "/registry", "kube-apiserver's --etcd-prefix")
}

func (f *etcdFlags) client() (*clientv3.Client, error) {
	cfg := clientv3.Config{Endpoints: f.endpoints, DialTimeout: f.dialTimeout, Logger: zap.NewNop()}
	if f.cacert != "" || f.cert != "" || f.key != "" {
		tlsInfo := transport.TLSInfo{CertFile: f.cert, KeyFile: f.key, TrustedCAFile: f.cacert}
		tc, err := tlsInfo.ClientConfig()
		if err != nil {
			return nil, fmt.Errorf("etcd TLS: %w", err)
		}
		cfg.TLS = tc
		for i, e := range cfg.Endpoints {
			if !strings.Contains(e, "://") {
				cfg.Endpoints[i] = "https://" + e
			}
		}
	}
	c, err := clientv3.New(cfg)
	if err != nil {
		return nil, fmt.Errorf("connect to etcd: %w", err)
	}
	// The client connects lazily: without this, an unreachable etcd
	// makes the first read hang instead of failing within --dial-timeout.
	ctx, cancel := context.WithTimeout(context.Background(), f.dialTimeout)
	defer cancel()
	var last error
	for _, ep := range cfg.Endpoints {
		if _, last = c.Status(ctx, ep); last == nil {
			return c, nil
		}
	}
	_ = c.Close()
	reason := status.Convert(last).Message()
	if ctx.Err() != nil {
		reason = "no answer"
	}
	return nil, fmt.Errorf("cannot reach etcd at %s within %s: %s (check --endpoints and the TLS flags)",
		strings.Join(cfg.Endpoints, ", "), f.dialTimeout, reason)
}

// resourceFlags choose the resources to work on: --resources, or the
// encrypted ones of --encryption-config, or secrets.
type resourceFlags struct {
	resources        []string
	encryptionConfig string
	kmsProvider      string
}

func (f *resourceFlags) register(cmd *cobra.Command) {
	cmd.Flags().StringSliceVar(&f.resources, "resources", nil, "resources as in an EncryptionConfiguration: secrets, configmaps, deployments.apps (default secrets)")
	cmd.Flags().StringVar(&f.encryptionConfig, "encryption-config", "", "take the resources from this EncryptionConfiguration: every entry that lists a provider other than identity, at any position")
	cmd.Flags().StringVar(&f.kmsProvider, "kms-provider", "", "with --encryption-config: only the entries that list this KMS provider name, at any position")
}

func (f *resourceFlags) list() ([]string, error) {
	switch {
	case len(f.resources) > 0 && f.encryptionConfig != "":
		return nil, fmt.Errorf("give --resources or --encryption-config, not both")
	case f.kmsProvider != "" && f.encryptionConfig == "":
		return nil, fmt.Errorf("--kms-provider selects entries of --encryption-config; give that file too")
	case len(f.resources) > 0:
		return f.resources, nil
	case f.encryptionConfig != "":
		cfg, err := encryptionconfig.Load(f.encryptionConfig)
		if err != nil {
			return nil, err
		}
		if f.kmsProvider != "" {
			res, err := encryptionconfig.ResourcesFor(cfg, f.kmsProvider)
			if err == nil && len(res) == 0 {
				err = fmt.Errorf("%s lists the KMS provider %q for no resource", f.encryptionConfig, f.kmsProvider)
			}
			return res, err
		}
		res, err := encryptionconfig.EncryptedResources(cfg)
		if err == nil && len(res) == 0 {
			err = fmt.Errorf("%s encrypts no resource", f.encryptionConfig)
		}
		return res, err
	}
	return []string{"secrets"}, nil
}

// addVaultFlags adds the plugin's --vault-* connection flags to fs, with
// the plugin-only tuning hidden: kmsctl makes few calls and keeps nothing.
func addVaultFlags(fs *pflag.FlagSet, cfg *vault.Config) {
	gofs := flag.NewFlagSet("vault", flag.ContinueOnError)
	cfg.RegisterFlags(gofs)
	fs.AddGoFlagSet(gofs)
	for _, name := range []string{"vault-refresh-interval", "vault-decrypt-cache-size", "vault-decrypt-cache-ttl", "vault-batch-decrypt"} {
		_ = fs.MarkHidden(name)
	}
}
