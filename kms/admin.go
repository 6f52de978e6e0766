package kms

import (
	"context"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	adminv1 "github.com/kms-plugin/kms-plugin/proto/kmsplugin/admin/v1"
	"github.com/kms-plugin/kms-plugin/providers"
)

// Admin serves kms-plugin's read-only admin API (proto/kmsplugin/admin/v1)
// beside KMS v2 on the same socket: what the plugin has loaded, for
// kmsctl status and for kmsctl rotate's checks before it promotes a key.
// It never returns key bytes.
type Admin struct {
	adminv1.UnimplementedAdminServer

	provider providers.Provider
	name     string
}

var _ adminv1.AdminServer = (*Admin)(nil)

// NewAdmin returns the admin service for provider, whose backend is named
// name ("local", "vault").
func NewAdmin(provider providers.Provider, name string) *Admin {
	return &Admin{provider: provider, name: name}
}

// GetLoaded reports the provider's current key, its key versions and how
// its last load went.
func (a *Admin) GetLoaded(ctx context.Context, _ *adminv1.GetLoadedRequest) (*adminv1.GetLoadedResponse, error) {
	const op = "admin"
	key, err := a.provider.Current()
	if err != nil {
		return nil, toStatus(op, err)
	}
	resp := &adminv1.GetLoadedResponse{Provider: a.name, PluginVersion: Version, CurrentKeyId: key.ID}
	if l, ok := a.provider.(providers.KeyLister); ok {
		infos, err := l.Keys(ctx)
		if err != nil {
			return nil, toStatus(op, err)
		}
		for _, i := range infos {
			resp.Versions = append(resp.Versions, &adminv1.KeyVersion{
				Version: i.Version, State: string(i.State), KeyId: i.KeyID, Created: timestamp(i.Created), Check: i.Check,
			})
		}
	}
	if l, ok := a.provider.(providers.Loader); ok {
		st := l.LoadState()
		resp.LoadedAt, resp.LastReloadAttempt = timestamp(st.LoadedAt), timestamp(st.LastAttempt)
		resp.ReloadInterval = durationpb.New(st.ReloadInterval)
		if st.LastError != nil {
			resp.LastReloadError = bounded(st.LastError.Error())
		}
	}
	return resp, nil
}

// timestamp converts t, leaving a zero time unset.
func timestamp(t time.Time) *timestamppb.Timestamp {
	if t.IsZero() {
		return nil
	}
	return timestamppb.New(t)
}
