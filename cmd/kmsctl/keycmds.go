package main

import (
	"github.com/spf13/cobra"

	"github.com/kms-plugin/kms-plugin/providers"
)

// keyBackend is a backend whose key kmsctl manages from outside the plugin
// (Vault, a PKCS#11 token), opened for one command and closed after it.
type keyBackend interface {
	providers.Rotator
	providers.Retirer
	Close() error
}

// newKeyRotateCmd is "<backend> rotate": open the backend, make a new key
// version current, and print what result says of it.
func newKeyRotateCmd[P keyBackend](short string, open func(*cobra.Command) (P, error), result func(providers.Key) result) *cobra.Command {
	var out output
	cmd := &cobra.Command{
		Use:   "rotate",
		Short: short,
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			p, err := open(cmd)
			if err != nil {
				return err
			}
			defer func() { _ = p.Close() }()
			k, err := p.Rotate(cmd.Context())
			if err != nil {
				return err
			}
			return printResult(cmd, out, result(k))
		},
	}
	addOutputFlag(cmd, &out)
	return cmd
}

// newKeyRetireCmd is "<backend> retire --below N": open the backend, stop
// the versions below N decrypting, and print what result says of it.
func newKeyRetireCmd[P keyBackend](short, long string, open func(*cobra.Command) (P, error), result func(below int64) result) *cobra.Command {
	var (
		below int64
		out   output
	)
	cmd := &cobra.Command{
		Use:   "retire --below N",
		Short: short,
		Long:  long,
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			p, err := open(cmd)
			if err != nil {
				return err
			}
			defer func() { _ = p.Close() }()
			if err := p.RetireBelow(cmd.Context(), below); err != nil {
				return err
			}
			return printResult(cmd, out, result(below))
		},
	}
	addOutputFlag(cmd, &out)
	cmd.Flags().Int64Var(&below, "below", 0, "lowest version that still decrypts (required)")
	_ = cmd.MarkFlagRequired("below")
	return cmd
}
