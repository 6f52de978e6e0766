// Package rotation runs a key-encryption-key rotation end to end, for the
// local keyring or Vault: add the new key version everywhere, make it
// current, wait until every plugin reports it and every kube-apiserver
// encrypts with it (proved with a canary write read back from etcd),
// re-encrypt every stored object through the API (package migrate), prove
// from etcd that nothing remains under another key (package verify), and
// only then, if asked, retire the old versions.
//
// Every step is idempotent and recorded in a state file, so an interrupted
// rotation resumes where it stopped; a failure stops the procedure with the
// state printed and never retires a key that anything still uses.
package rotation
