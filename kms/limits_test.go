package kms

import (
	"bytes"
	"context"
	"log/slog"
	"path/filepath"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	kmsapi "k8s.io/kms/apis/v2"
)

// TestOversizedRequestStrings: a caller that sends huge strings gets a
// clear refusal, and the log stays small: a 4 MB uid is refused before it
// is read into a handler, and a large one under the size limit is logged
// cut short.
func TestOversizedRequestStrings(t *testing.T) {
	var logs bytes.Buffer
	log := slog.New(slog.NewJSONHandler(&syncWriter{w: &logs}, nil))
	f := okFake()
	srv := NewGRPCServer(NewServer(f, NewHealth(f, 0, 0, nil, nil), log, nil), nil)
	sock := filepath.Join(t.TempDir(), "kms.sock")
	l, err := Listen(Endpoint{Address: sock}, SocketOptions{})
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = srv.Serve(l) }()
	t.Cleanup(srv.Stop)
	client, conn, err := Dial("unix://" + sock)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx := context.Background()

	huge := strings.Repeat("u", 4<<20)
	for range 5 {
		_, err := client.Encrypt(ctx, &kmsapi.EncryptRequest{Plaintext: []byte("seed"), Uid: huge})
		if status.Code(err) != codes.ResourceExhausted {
			t.Fatalf("Encrypt(uid of 4 MB) = %v, want %s", err, codes.ResourceExhausted)
		}
	}
	large := strings.Repeat("k", 32<<10)
	for range 5 {
		_, err := client.Decrypt(ctx, &kmsapi.DecryptRequest{Ciphertext: []byte{1}, KeyId: large, Uid: large})
		if status.Code(err) != codes.InvalidArgument {
			t.Fatalf("Decrypt(key_id and uid of 32 KiB) = %v, want %s", err, codes.InvalidArgument)
		}
	}
	if n := logs.Len(); n > 5*2048 {
		t.Errorf("10 calls with oversized strings wrote %d bytes of log, want at most %d", n, 5*2048)
	}
	if !strings.Contains(logs.String(), "...(32768 bytes)") {
		t.Errorf("the log does not say how long the cut string was:\n%.2000s", logs.String())
	}
}

func TestBounded(t *testing.T) {
	cases := []struct {
		name, in string
		want     string
	}{
		{"short", "uid-1", "uid-1"},
		{"at the limit", strings.Repeat("a", maxLoggedString), strings.Repeat("a", maxLoggedString)},
		{"over", strings.Repeat("a", maxLoggedString+1), strings.Repeat("a", maxLoggedString) + "...(257 bytes)"},
		{"multibyte at the cut", strings.Repeat("a", maxLoggedString-1) + "é", strings.Repeat("a", maxLoggedString-1) + "...(257 bytes)"},
	}
	for _, c := range cases {
		if got := bounded(c.in); got != c.want {
			t.Errorf("%s: bounded(%d bytes) = %q, want %q", c.name, len(c.in), got, c.want)
		}
	}
}
