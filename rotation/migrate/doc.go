// Package migrate re-encrypts stored objects through the Kubernetes API:
// it lists a resource in pages and writes every object back unchanged.
// kube-apiserver marks an object read under a key_id other than its
// current one as stale, so the unchanged write stores it again under the
// current key (and a write of an up-to-date object costs no etcd write).
//
// Writes run with bounded concurrency and an optional client-side rate
// limit; a conflict re-reads the object and retries, an object deleted
// meanwhile is skipped and counted. A checkpoint file per resource records
// the continue token of the first page not yet fully written, so an
// interrupted run resumes where it stopped. kmsctl migrate is its command
// line.
package migrate
