package main

import (
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"strings"
	"syscall"

	"github.com/hashicorp/vault/api"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"google.golang.org/grpc"
	kmsapi "k8s.io/kms/apis/v2"

	"github.com/kms-plugin/kms-plugin/bench"
	"github.com/kms-plugin/kms-plugin/kms"
)

// The floors that kmsctl bench --baseline starts.
const (
	floorNoop    = "noop"
	floorTransit = "transit"
)

// transitFloorFlags are what the transit floor needs to reach Vault. The
// token never goes on a command line: the parent reads it and hands it to
// the child in VAULT_TOKEN.
type transitFloorFlags struct {
	addr, mount, key, tokenFile, caCert string
}

func (f *transitFloorFlags) register(fs *pflag.FlagSet) {
	fs.StringVar(&f.addr, "vault-addr", os.Getenv(api.EnvVaultAddress), "--floor transit: Vault address; the first of a comma-separated list (env VAULT_ADDR)")
	fs.StringVar(&f.mount, "vault-mount", "transit", "--floor transit: mount path of the transit engine")
	fs.StringVar(&f.key, "vault-key", "", "--floor transit: transit key, the one the plugin uses")
	fs.StringVar(&f.tokenFile, "vault-token-file", "", "--floor transit: file holding a token that may use the key (else env VAULT_TOKEN)")
	fs.StringVar(&f.caCert, "vault-cacert", os.Getenv(api.EnvVaultCACert), "--floor transit: PEM CA bundle that verifies Vault's certificate (env VAULT_CACERT)")
}

// childArgs are the arguments and extra environment of the floor's process.
func (f *transitFloorFlags) childArgs(floor string) ([]string, []string, error) {
	switch floor {
	case floorNoop:
		return []string{"noop-server"}, nil, nil
	case floorTransit:
	default:
		return nil, nil, fmt.Errorf("--floor %q: want %s or %s", floor, floorNoop, floorTransit)
	}
	addr, _, _ := strings.Cut(f.addr, ",")
	if addr == "" || f.key == "" {
		return nil, nil, errors.New("--floor transit needs --vault-addr (or VAULT_ADDR) and --vault-key")
	}
	token := os.Getenv(api.EnvVaultToken)
	if f.tokenFile != "" {
		b, err := os.ReadFile(f.tokenFile)
		if err != nil {
			return nil, nil, fmt.Errorf("--vault-token-file: %w", err)
		}
		token = strings.TrimSpace(string(b))
	}
	if token == "" {
		return nil, nil, errors.New("--floor transit needs a Vault token: set VAULT_TOKEN or --vault-token-file")
	}
	args := []string{"transit-floor", "--vault-addr", addr, "--vault-mount", f.mount, "--vault-key", f.key}
	if f.caCert != "" {
		args = append(args, "--vault-cacert", f.caCert)
	}
	return args, []string{api.EnvVaultToken + "=" + token}, nil
}

func newNoopServerCmd() *cobra.Command {
	var listen string
	cmd := &cobra.Command{
		Use:    "noop-server",
		Short:  "Serve a no-op KMS v2 server (the floor for --baseline); never for real data",
		Hidden: true,
		Args:   cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return serveFloor(cmd, listen, bench.NoopServer{})
		},
	}
	cmd.Flags().StringVar(&listen, "listen", "", "socket to serve on")
	_ = cmd.MarkFlagRequired("listen")
	return cmd
}

func newTransitFloorCmd() *cobra.Command {
	var listen, addr, mount, key, caCert string
	cmd := &cobra.Command{
		Use:    "transit-floor",
		Short:  "Serve a KMS v2 server that makes one raw Vault transit call per request (the floor for --floor transit); never for real data",
		Hidden: true,
		Args:   cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			token := os.Getenv(api.EnvVaultToken)
			if token == "" {
				return errors.New("transit-floor: VAULT_TOKEN is not set")
			}
			tr := http.DefaultTransport.(*http.Transport).Clone()
			tr.MaxIdleConnsPerHost = 1024
			if caCert != "" {
				// ConfigureTLS sets up the transport of cfg's client: tr.
				cfg := api.DefaultConfig()
				cfg.HttpClient.Transport = tr
				if err := cfg.ConfigureTLS(&api.TLSConfig{CACert: caCert}); err != nil {
					return fmt.Errorf("transit-floor: --vault-cacert: %w", err)
				}
			}
			f, err := bench.NewTransitFloor(&http.Client{Transport: tr}, addr, mount, key, token)
			if err != nil {
				return err
			}
			return serveFloor(cmd, listen, f)
		},
	}
	fs := cmd.Flags()
	fs.StringVar(&listen, "listen", "", "socket to serve on")
	fs.StringVar(&addr, "vault-addr", "", "Vault address")
	fs.StringVar(&mount, "vault-mount", "transit", "transit mount")
	fs.StringVar(&key, "vault-key", "", "transit key")
	fs.StringVar(&caCert, "vault-cacert", "", "PEM CA bundle")
	_ = cmd.MarkFlagRequired("listen")
	return cmd
}

// serveFloor serves srv on listen until the command's context ends.
func serveFloor(cmd *cobra.Command, listen string, srv kmsapi.KeyManagementServiceServer) error {
	ep, err := kms.ParseEndpoint(listen)
	if err != nil {
		return err
	}
	l, err := kms.Listen(ep, kms.SocketOptions{})
	if err != nil {
		return err
	}
	gs := grpc.NewServer()
	kmsapi.RegisterKeyManagementServiceServer(gs, srv)
	go func() { <-cmd.Context().Done(); gs.Stop() }()
	if err := gs.Serve(l); err != nil && !errors.Is(err, grpc.ErrServerStopped) {
		return err
	}
	return nil
}

// benchPID is the process whose CPU kmsctl bench reports: pid if given,
// none for -1, else the process serving the unix socket (its peer
// credentials), when this host can read its /proc entry.
func benchPID(endpoint string, pid int) (int, error) {
	switch {
	case pid == -1:
		return 0, nil
	case pid > 0:
		if _, err := bench.SampleProc(pid); err != nil {
			return 0, fmt.Errorf("--pid %d: %w", pid, err)
		}
		return pid, nil
	case pid < -1:
		return 0, flagError(fmt.Errorf("--pid %d: want a process id, or -1 for none", pid))
	}
	ep, err := kms.ParseEndpoint(endpoint)
	if err != nil {
		return 0, err
	}
	peer, err := socketPeerPID(ep.Address)
	if err != nil {
		return 0, nil // another network namespace or no permission: no CPU figure
	}
	if _, err := bench.SampleProc(peer); err != nil {
		return 0, nil
	}
	return peer, nil
}

// socketPeerPID connects to the unix socket at address and asks the kernel
// which process listens on it (SO_PEERCRED).
func socketPeerPID(address string) (int, error) {
	c, err := net.Dial("unix", address)
	if err != nil {
		return 0, err
	}
	defer c.Close()
	raw, err := c.(*net.UnixConn).SyscallConn()
	if err != nil {
		return 0, err
	}
	var cred *syscall.Ucred
	var credErr error
	if err := raw.Control(func(fd uintptr) {
		cred, credErr = syscall.GetsockoptUcred(int(fd), syscall.SOL_SOCKET, syscall.SO_PEERCRED)
	}); err != nil {
		return 0, err
	}
	if credErr != nil {
		return 0, credErr
	}
	if cred.Pid <= 0 {
		return 0, errors.New("the socket's peer has no process id here")
	}
	return int(cred.Pid), nil
}
