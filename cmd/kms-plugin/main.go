// Command kms-plugin is a Kubernetes KMS v2 provider. It runs beside
// kube-apiserver on each control-plane node and serves the KMS v2 gRPC API on
// a unix socket, wrapping the apiserver's data-encryption keys with a
// key-encryption key held by a local keyring or HashiCorp Vault's transit
// engine.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spf13/pflag"

	"github.com/kms-plugin/kms-plugin/kms"
	"github.com/kms-plugin/kms-plugin/kms/contract"
	"github.com/kms-plugin/kms-plugin/providers"
	"github.com/kms-plugin/kms-plugin/providers/local"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "kms-plugin:", err)
		os.Exit(1)
	}
}

// envPrefix names the environment variables that set flags: --health-addr
// is KMS_PLUGIN_HEALTH_ADDR. A flag on the command line wins over its
// variable; a static pod or a systemd unit may prefer either.
const envPrefix = "KMS_PLUGIN_"

// envName is the environment variable of flag name.
func envName(name string) string {
	return envPrefix + strings.ToUpper(strings.ReplaceAll(name, "-", "_"))
}

// applyEnv sets every flag not given on the command line from its
// environment variable, if that is set.
func applyEnv(fs *pflag.FlagSet, lookup func(string) (string, bool)) error {
	var err error
	fs.VisitAll(func(f *pflag.Flag) {
		if err != nil || f.Changed {
			return
		}
		if v, ok := lookup(envName(f.Name)); ok {
			if serr := fs.Set(f.Name, v); serr != nil {
				err = fmt.Errorf("%s=%q (--%s): %w", envName(f.Name), v, f.Name, serr)
			}
		}
	})
	return err
}

const usageText = `kms-plugin is a Kubernetes KMS v2 provider. It runs beside kube-apiserver
on each control-plane node, serves KMS v2 on a unix socket (and kms-plugin's
admin API beside it), and wraps the apiserver's data-encryption keys with a
key-encryption key held in a local keyring file or in Vault's transit engine.

Usage:
  kms-plugin [flags]

Examples:
  kms-plugin --dev                                   # a local dev keyring; never in production
  kms-plugin --keyring /etc/kubernetes/kms-plugin/keyring.json
  kms-plugin --provider vault --vault-addr https://vault.example:8200 \
    --vault-auth approle --vault-role-id-file F --vault-secret-id-file G

Every flag can also be set with an environment variable: KMS_PLUGIN_ and the
flag's name in capitals with _ for -, such as KMS_PLUGIN_HEALTH_ADDR. A flag
given on the command line wins.

Flags:
`

// defaultListen is where the plugin serves unless told otherwise; its
// directory is the only one the plugin creates.
const defaultListen = contract.DefaultEndpoint

// options are kms-plugin's own flags; each provider registers its own.
type options struct {
	provider        string
	listen          string
	socketMode      string
	socketGroup     string
	healthAddr      string
	healthInterval  time.Duration
	healthTimeout   time.Duration
	shutdownTimeout time.Duration
	logFormat       string
	logLevel        string
	version         bool
	dev             bool
	stateDir        string
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	localFactory := local.NewFactory()
	registry := newRegistry(localFactory)

	// Providers register on a Go FlagSet; pflag parses it (below), so that
	// flags, help and errors read as kmsctl's do (--flag).
	fs := flag.NewFlagSet("kms-plugin", flag.ContinueOnError)
	var o options
	fs.StringVar(&o.provider, "provider", "local", fmt.Sprintf("key-encryption-key backend: %v", registry.Names()))
	fs.StringVar(&o.listen, "listen", defaultListen, "KMS v2 gRPC endpoint: unix:///path or unix:///@abstract-name (its directory must exist, but for the default's)")
	fs.StringVar(&o.socketMode, "socket-mode", "0600", "file mode of the socket; widen only deliberately")
	fs.StringVar(&o.socketGroup, "socket-group", "", "group (name or gid) that owns the socket")
	fs.StringVar(&o.healthAddr, "health-addr", "127.0.0.1:8787", "address for /livez, /readyz, /healthz and /metrics (empty disables)")
	fs.DurationVar(&o.healthInterval, "health-interval", 10*time.Second, "how often the background probe checks the provider")
	fs.DurationVar(&o.healthTimeout, "health-timeout", 5*time.Second, "how long one background probe may take")
	fs.DurationVar(&o.shutdownTimeout, "shutdown-timeout", 10*time.Second, "how long in-flight calls may finish after SIGTERM")
	fs.StringVar(&o.logFormat, "log-format", "text", "log format: text or json")
	fs.StringVar(&o.logLevel, "log-level", "info", "log level: debug, info, warn or error")
	fs.BoolVar(&o.version, "version", false, "print the version and exit")
	fs.BoolVar(&o.dev, "dev", false, "development mode: local provider on a keyring created under --state-dir (never for production)")
	fs.StringVar(&o.stateDir, "state-dir", defaultStateDir(), "with --dev: where the dev keyring and socket live")
	registry.RegisterFlags(fs)
	pfs := pflag.NewFlagSet("kms-plugin", pflag.ContinueOnError)
	pfs.AddGoFlagSet(fs)
	pfs.SetOutput(io.Discard) // errors are returned, help goes to stdout
	pfs.Usage = func() {}
	if err := pfs.Parse(args); err != nil {
		if errors.Is(err, pflag.ErrHelp) {
			_, err := fmt.Fprint(stdout, usageText, pfs.FlagUsages())
			return err
		}
		return fmt.Errorf("%w (see kms-plugin --help)", err)
	}
	if pfs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments %v: kms-plugin takes flags only (see kms-plugin --help)", pfs.Args())
	}
	if err := applyEnv(pfs, os.LookupEnv); err != nil {
		return err
	}
	if o.version {
		_, err := fmt.Fprintln(stdout, "kms-plugin", kms.Version)
		return err
	}

	log, err := newLogger(stderr, o.logFormat, o.logLevel)
	if err != nil {
		return err
	}
	if err := hardenProcess(); err != nil {
		return err
	}
	if o.dev {
		if !filepath.IsAbs(o.stateDir) {
			return fmt.Errorf("--state-dir %q: want an absolute path", o.stateDir)
		}
		if !pfs.Changed("listen") {
			o.listen = "unix://" + filepath.Join(o.stateDir, "kms.sock")
		}
	}
	// Every flag is checked before anything is created or bound.
	if _, err := o.serveConfig(); err != nil {
		return err
	}
	if o.dev {
		if err := setUpDev(&o, localFactory, log); err != nil {
			return err
		}
	}
	cfg, err := o.serveConfig()
	if err != nil {
		return err
	}
	if w := kms.WideModeWarning(cfg.Socket.Mode); w != "" {
		log.Warn(w)
	}

	reg := prometheus.NewRegistry()
	provider, err := registry.New(ctx, o.provider, providers.Env{Logger: log.With("provider", o.provider), Metrics: reg})
	if err != nil {
		return fmt.Errorf("start %s provider: %w", o.provider, err)
	}
	defer closeWithin(provider, o.shutdownTimeout, log)
	return kms.Serve(ctx, cfg, provider, log, reg, nil)
}

// closeWithin closes provider, giving up after timeout so that a backend
// stuck in a call (a hung file system, an unanswering server) never keeps
// the process from exiting on SIGTERM.
func closeWithin(provider providers.Provider, timeout time.Duration, log *slog.Logger) {
	done := make(chan struct{})
	go func() {
		if err := provider.Close(); err != nil {
			log.Warn("closing the provider", "err", err)
		}
		close(done)
	}()
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case <-done:
	case <-t.C:
		log.Warn("the provider did not close in time; exiting anyway", "timeout", timeout)
	}
}

func (o options) serveConfig() (kms.Config, error) {
	ep, err := kms.ParseEndpoint(o.listen)
	if err != nil {
		return kms.Config{}, fmt.Errorf("--listen: %w", err)
	}
	mode, err := strconv.ParseUint(o.socketMode, 8, 32)
	if err != nil || mode > 0o777 {
		return kms.Config{}, fmt.Errorf("--socket-mode %q: want an octal mode such as 0600", o.socketMode)
	}
	if o.healthInterval <= 0 || o.healthTimeout <= 0 || o.shutdownTimeout <= 0 {
		return kms.Config{}, errors.New("--health-interval, --health-timeout and --shutdown-timeout must be positive")
	}
	// Only the default socket directory is created; a --listen elsewhere
	// must name a directory that exists.
	sock := kms.SocketOptions{Mode: fs.FileMode(mode), Group: o.socketGroup, CreateDir: o.listen == defaultListen}
	if err := sock.Validate(); err != nil {
		return kms.Config{}, fmt.Errorf("--socket-group: %w", err)
	}
	return kms.Config{
		Endpoint:        ep,
		Socket:          sock,
		HealthAddr:      o.healthAddr,
		HealthInterval:  o.healthInterval,
		HealthTimeout:   o.healthTimeout,
		ShutdownTimeout: o.shutdownTimeout,
		ProviderName:    o.provider,
	}, nil
}

func newLogger(w io.Writer, format, level string) (*slog.Logger, error) {
	var lv slog.Level
	if err := lv.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("--log-level %q: want debug, info, warn or error", level)
	}
	opts := &slog.HandlerOptions{Level: lv}
	switch format {
	case "text":
		return slog.New(slog.NewTextHandler(w, opts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	default:
		return nil, fmt.Errorf("--log-format %q: want text or json", format)
	}
}

func defaultStateDir() string {
	if d := os.Getenv("XDG_STATE_HOME"); d != "" {
		return filepath.Join(d, "kms-plugin-dev")
	}
	if h, err := os.UserHomeDir(); err == nil {
		return filepath.Join(h, ".local", "state", "kms-plugin-dev")
	}
	return filepath.Join(os.TempDir(), "kms-plugin-dev")
}

// setUpDev points the local provider at a keyring under the state
// directory, creating it on first use (run puts the socket there unless
// --listen was given).
func setUpDev(o *options, lf *local.Factory, log *slog.Logger) error {
	if o.provider != "local" {
		return fmt.Errorf("--dev runs the local provider; drop --provider %s", o.provider)
	}
	if lf.Config.Keyring == "" {
		lf.Config.Keyring = filepath.Join(o.stateDir, "keyring.json")
	}
	// Name the keyring actually used: --keyring may point outside the
	// state directory.
	log.Warn("DEVELOPMENT MODE: the key-encryption key is a plain file on this host; never use --dev on a real cluster",
		"keyring", lf.Config.Keyring, "state_dir", o.stateDir)
	if err := os.MkdirAll(o.stateDir, 0o700); err != nil {
		return fmt.Errorf("create state directory: %w", err)
	}
	if _, err := os.Stat(lf.Config.Keyring); errors.Is(err, os.ErrNotExist) {
		k, err := local.NewKeyring(time.Now())
		if err != nil {
			return err
		}
		if err := local.Create(lf.Config.Keyring, k); err != nil {
			return err
		}
		log.Info("created dev keyring", "path", lf.Config.Keyring, "key_id", k.KeyID(k.Primary().Version))
	}
	return nil
}
