package cluster

import (
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"net"
	"os"
	"path/filepath"

	testpki "github.com/kms-plugin/kms-plugin/test/pki"
)

// pki is the set of credentials a local control plane needs, written as
// PEM files into one directory.
type pki struct {
	CACert      string // CA that signs the serving and client certificates
	ServingCert string // kube-apiserver serving certificate (127.0.0.1, localhost)
	ServingKey  string
	AdminCert   string // client certificate in group system:masters
	AdminKey    string
	SAKey       string // service-account signing key (private)
	SAPub       string // service-account verification key (public)

	caPEM, adminCertPEM, adminKeyPEM []byte
}

// newPKI generates a CA, a serving certificate for loopback, an admin client
// certificate and a service-account key pair into dir.
func newPKI(dir string) (*pki, error) {
	ca, err := testpki.NewCA("kms-plugin-e2e-ca")
	if err != nil {
		return nil, err
	}
	p := &pki{
		CACert:      filepath.Join(dir, "ca.crt"),
		ServingCert: filepath.Join(dir, "apiserver.crt"),
		ServingKey:  filepath.Join(dir, "apiserver.key"),
		AdminCert:   filepath.Join(dir, "admin.crt"),
		AdminKey:    filepath.Join(dir, "admin.key"),
		SAKey:       filepath.Join(dir, "sa.key"),
		SAPub:       filepath.Join(dir, "sa.pub"),
		caPEM:       ca.PEM,
	}
	if err := ca.WriteCert(p.CACert); err != nil {
		return nil, err
	}
	if _, _, err := ca.Issue(testpki.Leaf{
		CommonName: "kube-apiserver",
		Usage:      x509.ExtKeyUsageServerAuth,
		DNSNames:   []string{"localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc"},
		IPs:        []net.IP{net.IPv4(127, 0, 0, 1), net.IPv4(10, 96, 0, 1)},
	}, p.ServingCert, p.ServingKey); err != nil {
		return nil, fmt.Errorf("issue serving certificate: %w", err)
	}
	if p.adminCertPEM, p.adminKeyPEM, err = ca.Issue(testpki.Leaf{
		CommonName:   "kms-e2e-admin",
		Organization: []string{"system:masters"},
		Usage:        x509.ExtKeyUsageClientAuth,
	}, p.AdminCert, p.AdminKey); err != nil {
		return nil, fmt.Errorf("issue admin certificate: %w", err)
	}

	saKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return nil, fmt.Errorf("generate service-account key: %w", err)
	}
	if _, err := testpki.WriteKey(p.SAKey, saKey); err != nil {
		return nil, err
	}
	pubDER, err := x509.MarshalPKIXPublicKey(saKey.Public())
	if err != nil {
		return nil, fmt.Errorf("marshal service-account public key: %w", err)
	}
	if err := os.WriteFile(p.SAPub, pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pubDER}), 0o600); err != nil {
		return nil, err
	}
	return p, nil
}
