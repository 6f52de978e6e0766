package bench

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	kmsapi "k8s.io/kms/apis/v2"

	"github.com/kms-plugin/kms-plugin/kms/contract"
)

// TransitFloor is a KMS v2 server with no logic of its own in front of
// Vault's transit engine: each Encrypt or Decrypt is one raw transit HTTP
// call made with net/http, with no SDK, no key_id check, no retries and no
// envelope. Served over the same gRPC stack, it is the floor of any plugin
// that wraps DEKs with transit: nothing that does the same Vault call per
// request behind a KMS v2 socket can be faster. It binds associated data
// of the length kms-plugin binds (floorAD), so that Vault does the same
// work for both.
// It must never hold real data: its key_id is fixed and it checks nothing.
type TransitFloor struct {
	kmsapi.UnimplementedKeyManagementServiceServer

	client  *http.Client
	encrypt string // URL of transit/encrypt/<key>
	decrypt string // URL of transit/decrypt/<key>
	token   string
	ad      string // base64 associated data
}

var _ kmsapi.KeyManagementServiceServer = (*TransitFloor)(nil)

const transitFloorKeyID = "transit-floor"

// floorAD is as long as the associated data kms-plugin's Vault provider
// sends for a KMS v2 envelope under the benchmark's key transit/kms: a
// 4-byte length, the 25-byte envelope tag and header, and a 31-byte key_id
// ("vault:transit/kms:v1:" and a 10-digit creation time). Other key names
// make the plugin's a few bytes longer or shorter.
var floorAD = bytes.Repeat([]byte{0xad}, 4+25+31)

// NewTransitFloor returns a floor for key under the transit mount at
// addr, authenticating with token. client carries the TLS settings; nil
// uses a transport that keeps enough idle connections for 1024 calls in
// flight.
func NewTransitFloor(client *http.Client, addr, mount, key, token string) (*TransitFloor, error) {
	u, err := url.Parse(addr)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("transit floor: %q is not an http(s) URL", addr)
	}
	if client == nil {
		tr := http.DefaultTransport.(*http.Transport).Clone()
		tr.MaxIdleConnsPerHost = 1024
		client = &http.Client{Transport: tr}
	}
	base := strings.TrimSuffix(addr, "/") + "/v1/" + strings.Trim(mount, "/") + "/"
	return &TransitFloor{
		client:  client,
		encrypt: base + "encrypt/" + url.PathEscape(key),
		decrypt: base + "decrypt/" + url.PathEscape(key),
		token:   token,
		ad:      base64.StdEncoding.EncodeToString(floorAD),
	}, nil
}

// Status reports a healthy plugin with a fixed key_id; like kms-plugin's,
// it makes no Vault call.
func (*TransitFloor) Status(context.Context, *kmsapi.StatusRequest) (*kmsapi.StatusResponse, error) {
	return &kmsapi.StatusResponse{Version: contract.APIVersion, Healthz: contract.HealthzOK, KeyId: transitFloorKeyID}, nil
}

// Encrypt is one transit encrypt call; the ciphertext is transit's string.
func (f *TransitFloor) Encrypt(ctx context.Context, r *kmsapi.EncryptRequest) (*kmsapi.EncryptResponse, error) {
	body := `{"plaintext":"` + base64.StdEncoding.EncodeToString(r.GetPlaintext()) + `","associated_data":"` + f.ad + `"}`
	var out struct {
		Data struct {
			Ciphertext string `json:"ciphertext"`
		} `json:"data"`
	}
	if err := f.post(ctx, f.encrypt, body, &out); err != nil {
		return nil, err
	}
	return &kmsapi.EncryptResponse{Ciphertext: []byte(out.Data.Ciphertext), KeyId: transitFloorKeyID}, nil
}

// Decrypt is one transit decrypt call.
func (f *TransitFloor) Decrypt(ctx context.Context, r *kmsapi.DecryptRequest) (*kmsapi.DecryptResponse, error) {
	ct, err := json.Marshal(string(r.GetCiphertext()))
	if err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	body := `{"ciphertext":` + string(ct) + `,"associated_data":"` + f.ad + `"}`
	var out struct {
		Data struct {
			Plaintext string `json:"plaintext"`
		} `json:"data"`
	}
	if err := f.post(ctx, f.decrypt, body, &out); err != nil {
		return nil, err
	}
	pt, err := base64.StdEncoding.DecodeString(out.Data.Plaintext)
	if err != nil {
		return nil, status.Error(codes.Internal, "transit returned a plaintext that is not base64")
	}
	return &kmsapi.DecryptResponse{Plaintext: pt}, nil
}

func (f *TransitFloor) post(ctx context.Context, u, body string, out any) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, u, strings.NewReader(body))
	if err != nil {
		return status.Error(codes.Internal, err.Error())
	}
	req.Header.Set("X-Vault-Token", f.token)
	resp, err := f.client.Do(req)
	if err != nil {
		return status.Error(codes.Unavailable, "transit call failed")
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		_, _ = io.Copy(io.Discard, resp.Body)
		return status.Errorf(codes.Unavailable, "transit answered HTTP %d", resp.StatusCode)
	}
	if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
		return status.Error(codes.Internal, "transit answered JSON the floor cannot read")
	}
	return nil
}
