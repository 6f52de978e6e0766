package kms

import (
	"context"
	"log/slog"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

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
		attrs = append(attrs, slog.String("uid", bounded(r.GetUid())), slog.Int("plaintext_bytes", len(r.GetPlaintext())))
		if out, ok := resp.(*kmsapi.EncryptResponse); ok {
			attrs = append(attrs, slog.String("key_id", out.GetKeyId()))
		}
	case *kmsapi.DecryptRequest:
		attrs = append(attrs, slog.String("uid", bounded(r.GetUid())), slog.String("key_id", bounded(r.GetKeyId())), slog.Int("ciphertext_bytes", len(r.GetCiphertext())))
	case *kmsapi.StatusRequest:
		if out, ok := resp.(*kmsapi.StatusResponse); ok {
			attrs = append(attrs, slog.String("key_id", out.GetKeyId()), slog.String("healthz", out.GetHealthz()))
		}
	}
	if err != nil {
		s, _ := status.FromError(err)
		attrs = append(attrs, slog.String("code", s.Code().String()), slog.String("err", bounded(s.Message())))
	}
	log.LogAttrs(ctx, level, "kms call", attrs...)
}

// maxLoggedString bounds each request-derived string in a log line. A uid
// is a UUID and a valid key_id at most 1 KiB; a caller that sends
// megabytes must not turn every failed call into megabytes of log.
const maxLoggedString = 256

// bounded returns s, or its first maxLoggedString bytes (cut at a rune
// boundary) and how long it was.
func bounded(s string) string {
	if len(s) <= maxLoggedString {
		return s
	}
	cut := maxLoggedString
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut] + "...(" + strconv.Itoa(len(s)) + " bytes)"
}
