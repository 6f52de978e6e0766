package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	kmsapi "k8s.io/kms/apis/v2"

	"github.com/kms-plugin/kms-plugin/kms"
	"github.com/kms-plugin/kms-plugin/kms/contract"
	adminv1 "github.com/kms-plugin/kms-plugin/proto/kmsplugin/admin/v1"
	"github.com/kms-plugin/kms-plugin/providers"
)

// statusResult is what `kmsctl status -o json` prints.
type statusResult struct {
	Endpoint string `json:"endpoint"`
	Version  string `json:"version"`
	Healthz  string `json:"healthz"`
	KeyID    string `json:"key_id"`
	// Loaded is what a kms-plugin reports through its admin API; absent
	// for other KMS v2 plugins.
	Loaded *loadedState `json:"loaded,omitempty"`
}

// statusError is what `kmsctl status -o json` prints when it fails.
type statusError struct {
	Endpoint string `json:"endpoint"`
	Error    string `json:"error"`
}

// loadedState is a plugin's admin GetLoaded reply.
type loadedState struct {
	Provider          string              `json:"provider"`
	PluginVersion     string              `json:"plugin_version"`
	CurrentKeyID      string              `json:"current_key_id"`
	LoadedAt          *time.Time          `json:"loaded_at,omitempty"`
	LastReloadAttempt *time.Time          `json:"last_reload_attempt,omitempty"`
	LastReloadError   string              `json:"last_reload_error,omitempty"`
	ReloadInterval    string              `json:"reload_interval"`
	Versions          []providers.KeyInfo `json:"versions"`
}

// getLoaded asks the kms-plugin behind conn what it has loaded. It returns
// nil, nil when the plugin serves no admin API (another KMS v2 plugin).
func getLoaded(ctx context.Context, conn grpc.ClientConnInterface) (*loadedState, error) {
	resp, err := adminv1.NewAdminClient(conn).GetLoaded(ctx, &adminv1.GetLoadedRequest{})
	if status.Code(err) == codes.Unimplemented {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	l := &loadedState{
		Provider: resp.GetProvider(), PluginVersion: resp.GetPluginVersion(), CurrentKeyID: resp.GetCurrentKeyId(),
		LastReloadError: resp.GetLastReloadError(), ReloadInterval: resp.GetReloadInterval().AsDuration().String(),
		LoadedAt: timeOf(resp.GetLoadedAt().AsTime(), resp.GetLoadedAt() != nil), LastReloadAttempt: timeOf(resp.GetLastReloadAttempt().AsTime(), resp.GetLastReloadAttempt() != nil),
		Versions: []providers.KeyInfo{},
	}
	for _, v := range resp.GetVersions() {
		l.Versions = append(l.Versions, providers.KeyInfo{
			Version: v.GetVersion(), KeyID: v.GetKeyId(), State: providers.KeyState(v.GetState()), Created: v.GetCreated().AsTime(), Check: v.GetCheck(),
		})
	}
	return l, nil
}

func timeOf(t time.Time, set bool) *time.Time {
	if !set {
		return nil
	}
	t = t.UTC()
	return &t
}

func newStatusCmd() *cobra.Command {
	var (
		endpoint string
		timeout  time.Duration
		out      output
	)
	cmd := &cobra.Command{
		Use:   "status",
		Short: "Ask a KMS v2 plugin for its Status and, from kms-plugin, what it has loaded",
		Long: `Call Status on a KMS v2 plugin, as kube-apiserver does. From kms-plugin,
also show what it has loaded, through its admin API on the same socket: the
provider, every key version with its state, key_id and check value (never
key bytes), when it last loaded its keys and the last reload error. On an HA
control plane, run it on every node: the same version must show the same
CHECK everywhere.

Exits non-zero when the call fails or the plugin does not report healthz
"ok".`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			// With -o json a failure is a JSON object too, so that a
			// script reading stdout always gets one.
			fail := func(err error) error {
				if out.structured() {
					_ = printData(cmd.OutOrStdout(), out, statusError{Endpoint: endpoint, Error: err.Error()})
				}
				return err
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), timeout)
			defer cancel()
			resp, conn, err := statusOf(ctx, endpoint, timeout)
			if err != nil {
				return fail(err)
			}
			defer conn.Close()
			res := statusResult{Endpoint: endpoint, Version: resp.GetVersion(), Healthz: resp.GetHealthz(), KeyID: resp.GetKeyId()}
			if res.Loaded, err = getLoaded(ctx, conn); err != nil {
				return fail(fmt.Errorf("admin API of %s: %s", endpoint, status.Convert(err).Message()))
			}
			if out.structured() {
				err = printData(cmd.OutOrStdout(), out, res)
			} else {
				err = printStatus(cmd.OutOrStdout(), res)
			}
			if err != nil {
				return err
			}
			if res.Healthz != contract.HealthzOK {
				return fmt.Errorf("plugin at %s is not healthy", endpoint)
			}
			return nil
		},
	}
	addEndpointFlag(cmd.Flags(), &endpoint)
	cmd.Flags().DurationVar(&timeout, "timeout", 3*time.Second, "how long to wait for the reply")
	addOutputFlag(cmd, &out)
	return cmd
}

// statusOf dials the plugin at endpoint and asks for its Status, telling
// an unreachable plugin (exit 2, with what is at the path) from one that
// answers with an error: the one place where kmsctl status and kmsctl
// rotate ask a plugin for Status. The caller closes conn.
func statusOf(ctx context.Context, endpoint string, timeout time.Duration) (*kmsapi.StatusResponse, *grpc.ClientConn, error) {
	client, conn, err := kms.Dial(endpoint)
	if err != nil {
		return nil, nil, err
	}
	resp, err := callStatus(ctx, client, endpoint, timeout)
	var unreachable *exitError
	switch {
	case errors.As(err, &unreachable):
		_ = conn.Close()
		return nil, nil, err
	case err != nil:
		_ = conn.Close()
		return nil, nil, fmt.Errorf("status of %s: %s: %s", endpoint, status.Code(err), status.Convert(err).Message())
	}
	return resp, conn, nil
}

// healthy reports whether a Status reply is a healthy KMS v2 plugin's.
func healthy(resp *kmsapi.StatusResponse) bool {
	return resp.GetHealthz() == contract.HealthzOK && resp.GetVersion() == contract.APIVersion
}

func printStatus(w io.Writer, res statusResult) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "endpoint:\t%s\nversion:\t%s\nhealthz:\t%s\nkey_id:\t%s\n", res.Endpoint, res.Version, res.Healthz, res.KeyID)
	if l := res.Loaded; l != nil {
		reload := "never (hot reload is off)"
		if l.ReloadInterval != "0s" {
			reload = "every " + l.ReloadInterval
		}
		fmt.Fprintf(tw, "provider:\t%s (kms-plugin %s)\n", l.Provider, l.PluginVersion)
		fmt.Fprintf(tw, "loaded:\t%s\nreloads:\t%s, last tried %s\nreload error:\t%s\n", timeText(l.LoadedAt), reload, timeText(l.LastReloadAttempt), dash(l.LastReloadError))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if res.Loaded == nil || len(res.Loaded.Versions) == 0 {
		return nil
	}
	_, _ = fmt.Fprintln(w)
	return writeKeyInfos(w, res.Loaded.Versions)
}

func timeText(t *time.Time) string {
	if t == nil {
		return "-"
	}
	return t.Format(time.RFC3339)
}
