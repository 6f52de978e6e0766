package main

import (
	"context"
	"fmt"
	"time"

	"github.com/spf13/cobra"
	kmsapi "k8s.io/kms/apis/v2"

	"github.com/kms-plugin/kms-plugin/kms"
)

// statusResult is what `kmsctl status -o json` prints.
type statusResult struct {
	Endpoint string `json:"endpoint"`
	Version  string `json:"version"`
	Healthz  string `json:"healthz"`
	KeyID    string `json:"key_id"`
}

func newStatusCmd() *cobra.Command {
	var (
		endpoint string
		timeout  time.Duration
		out      output
	)
	cmd := &cobra.Command{
		Use:   "status",
		Short: "Ask a KMS v2 plugin (any plugin, not only kms-plugin) for its Status",
		Long: `Call Status on a KMS v2 plugin, as kube-apiserver does. Exits non-zero
when the call fails or the plugin does not report healthz "ok".`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			client, conn, err := kms.Dial(endpoint)
			if err != nil {
				return err
			}
			defer conn.Close()
			ctx, cancel := context.WithTimeout(cmd.Context(), timeout)
			defer cancel()
			resp, err := client.Status(ctx, &kmsapi.StatusRequest{})
			if err != nil {
				return fmt.Errorf("status of %s: %w", endpoint, err)
			}
			res := statusResult{Endpoint: endpoint, Version: resp.GetVersion(), Healthz: resp.GetHealthz(), KeyID: resp.GetKeyId()}
			if out == "json" {
				err = printJSON(cmd.OutOrStdout(), res)
			} else {
				_, err = fmt.Fprintf(cmd.OutOrStdout(), "endpoint: %s\nversion:  %s\nhealthz:  %s\nkey_id:   %s\n", res.Endpoint, res.Version, res.Healthz, res.KeyID)
			}
			if err != nil {
				return err
			}
			if res.Healthz != "ok" {
				return fmt.Errorf("plugin at %s is not healthy", endpoint)
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&endpoint, "endpoint", "unix:///var/run/kms-plugin/kms.sock", "plugin endpoint: unix:///path or unix:///@name")
	cmd.Flags().DurationVar(&timeout, "timeout", 3*time.Second, "how long to wait for the reply")
	addOutputFlag(cmd, &out)
	return cmd
}
