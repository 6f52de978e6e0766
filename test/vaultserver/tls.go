package vaultserver

import (
	"crypto/x509"
	"net"
	"path/filepath"

	"github.com/kms-plugin/kms-plugin/test/pki"
)

// TLSFiles are PEM files made by a throwaway CA: the server's certificate
// (for 127.0.0.1 and localhost) and a client certificate for cert auth.
type TLSFiles struct {
	CACert     string
	ServerCert string
	ServerKey  string
	ClientCert string
	ClientKey  string
	// CAPEM is the CA certificate, as cert auth's "certificate" wants it.
	CAPEM []byte
}

func generateTLS(dir string) (*TLSFiles, error) {
	ca, err := pki.NewCA("kms-plugin test CA")
	if err != nil {
		return nil, err
	}
	f := &TLSFiles{
		CACert:     filepath.Join(dir, "ca.pem"),
		ServerCert: filepath.Join(dir, "server.pem"),
		ServerKey:  filepath.Join(dir, "server-key.pem"),
		ClientCert: filepath.Join(dir, "client.pem"),
		ClientKey:  filepath.Join(dir, "client-key.pem"),
		CAPEM:      ca.PEM,
	}
	if err := ca.WriteCert(f.CACert); err != nil {
		return nil, err
	}
	if _, _, err := ca.Issue(pki.Leaf{CommonName: "127.0.0.1", Usage: x509.ExtKeyUsageServerAuth,
		DNSNames: []string{"localhost"}, IPs: []net.IP{net.IPv4(127, 0, 0, 1)}}, f.ServerCert, f.ServerKey); err != nil {
		return nil, err
	}
	if _, _, err := ca.Issue(pki.Leaf{CommonName: "kms-plugin", Usage: x509.ExtKeyUsageClientAuth}, f.ClientCert, f.ClientKey); err != nil {
		return nil, err
	}
	return f, nil
}
