package kms

import (
	"context"
	"log/slog"
	"strings"
	"time"

	"google.golang.org/grpc/status"
	kmsapi "k8s.io/kms/apis/v2"
)

// methodName turns "/v2.KeyManagementService/Encrypt" into "Encrypt".
func methodName(full string) string {
	if i := strings.LastIndexByte(full, '/'); i >= 0 {
		return full[i+1:]
	}
	return full
}

// logCall logs one request: the method, the apiserver's uid, the key_id and
// the outcome. It logs sizes, never plaintext, ciphertext or key bytes.
// Status polls log only at debug level; failures log at warn.
func logCall(ctx context.Context, log *slog.Logger, method string, req, resp any, err error, d time.Duration) {
	level := slog.LevelDebug
	if err != nil {
		level = slog.LevelWarn
	}
	if !log.Enabled(ctx, level) {
		return
	}
	attrs := []slog.Attr{slog.String("op", method), slog.Float64("duration_seconds", d.Seconds())}
	switch r := req.(type) {
	case *kmsapi.EncryptRequest:
		attrs = append(attrs, slog.String("uid", r.GetUid()), slog.Int("plaintext_bytes", len(r.GetPlaintext())))
		if out, ok := resp.(*kmsapi.EncryptResponse); ok {
			attrs = append(attrs, slog.String("key_id", out.GetKeyId()))
		}
	case *kmsapi.DecryptRequest:
		attrs = append(attrs, slog.String("uid", r.GetUid()), slog.String("key_id", r.GetKeyId()), slog.Int("ciphertext_bytes", len(r.GetCiphertext())))
	case *kmsapi.StatusRequest:
		if out, ok := resp.(*kmsapi.StatusResponse); ok {
			attrs = append(attrs, slog.String("key_id", out.GetKeyId()), slog.String("healthz", out.GetHealthz()))
		}
	}
	if err != nil {
		s, _ := status.FromError(err)
		attrs = append(attrs, slog.String("code", s.Code().String()), slog.String("err", s.Message()))
	}
	log.LogAttrs(ctx, level, "kms call", attrs...)
}
