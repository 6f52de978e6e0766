// Package verify reads what kube-apiserver stored in etcd and says how each
// value is protected: plaintext, aescbc, aesgcm or secretbox with a key
// name, KMS v1 with a provider name, or KMS v2 with a provider name and the
// key_id parsed from the stored EncryptedObject. It scans with paginated
// range reads, so memory stays bounded however many objects there are, and
// it never writes. kmsctl verify is its command line.
package verify
