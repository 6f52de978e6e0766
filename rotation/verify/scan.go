package verify

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// KV is the part of etcd's client the audit uses: range reads only.
type KV interface {
	Get(ctx context.Context, key string, opts ...clientv3.OpOption) (*clientv3.GetResponse, error)
}

// Object is one stored value and how it is protected.
type Object struct {
	Key       string `json:"key"`
	Resource  string `json:"resource"`
	Namespace string `json:"namespace,omitempty"`
	Name      string `json:"name"`
	Class
	// Offending is set when an expectation was given and this value
	// fails it.
	Offending bool `json:"offending,omitempty"`
}

// ID is "resource namespace/name" or "resource name".
func (o Object) ID() string {
	if o.Namespace == "" {
		return o.Resource + " " + o.Name
	}
	return o.Resource + " " + o.Namespace + "/" + o.Name
}

// Expect says what every value should be. Empty fields expect nothing.
type Expect struct {
	// Providers lists acceptable kms provider names, or types such as
	// identity or aescbc for values that no kms provider wrote.
	Providers []string
	// KeyIDs lists acceptable KMS v2 key_ids.
	KeyIDs []string
}

// Set reports whether any expectation is given.
func (e Expect) Set() bool { return len(e.Providers) > 0 || len(e.KeyIDs) > 0 }

// Met reports whether c meets every expectation.
func (e Expect) Met(c Class) bool {
	if c.Problem != "" && e.Set() {
		return false
	}
	if len(e.Providers) > 0 {
		ok := false
		for _, p := range e.Providers {
			if p == string(c.Type) || ((c.Type == KMSv1 || c.Type == KMSv2) && p == c.Provider) {
				ok = true
			}
		}
		if !ok {
			return false
		}
	}
	if len(e.KeyIDs) > 0 {
		if c.Type != KMSv2 {
			return false
		}
		ok := false
		for _, id := range e.KeyIDs {
			if id == c.KeyID {
				ok = true
			}
		}
		if !ok {
			return false
		}
	}
	return true
}

// Options shape a scan.
type Options struct {
	// EtcdPrefix is kube-apiserver's --etcd-prefix; default /registry.
	EtcdPrefix string
	// Resources to scan, as in an EncryptionConfiguration; default secrets.
	Resources []string
	// PageSize is how many values one range read returns; default 500.
	PageSize int64
	// Expect makes objects that fail it offenders.
	Expect Expect
	// MaxOffenders bounds how many offenders Report keeps (default 100);
	// Each still sees all of them.
	MaxOffenders int
	// Each, if set, is called for every object in key order.
	Each func(Object) error
	// Progress, if set, is called after every page with the running total.
	Progress func(resource string, scanned int64)
}

// Count is one row of the summary: how many values of a resource share a
// protection.
type Count struct {
	Resource string `json:"resource"`
	Type     Type   `json:"type"`
	Provider string `json:"provider,omitempty"`
	Key      string `json:"key,omitempty"`
	KeyID    string `json:"key_id,omitempty"`
	Problem  bool   `json:"damaged,omitempty"`
	Objects  int64  `json:"objects"`
}

// Report is the outcome of a scan.
type Report struct {
	Counts []Count `json:"summary"`
	Total  int64   `json:"total"`
	// OffenderCount counts every offender; Offenders holds the first
	// MaxOffenders of them.
	OffenderCount int64    `json:"offender_count"`
	Offenders     []Object `json:"offenders,omitempty"`
}

// ErrExpectation is returned by Report.Err when objects failed the
// expectation.
var ErrExpectation = errors.New("objects fail the expectation")

// Err returns an error wrapping ErrExpectation that names the offenders
// kept, or nil.
func (r Report) Err() error {
	if r.OffenderCount == 0 {
		return nil
	}
	var b strings.Builder
	for _, o := range r.Offenders {
		fmt.Fprintf(&b, "\n  %s (%s)", o.ID(), o.Label())
	}
	if more := r.OffenderCount - int64(len(r.Offenders)); more > 0 {
		fmt.Fprintf(&b, "\n  ... and %d more (-o json lists them all)", more)
	}
	return fmt.Errorf("%d of %d %w:%s", r.OffenderCount, r.Total, ErrExpectation, b.String())
}

// Scan reads every value of the resources in opts and classifies it. It
// only reads, one page at a time.
func Scan(ctx context.Context, kv KV, opts Options) (Report, error) {
	if opts.EtcdPrefix == "" {
		opts.EtcdPrefix = "/registry"
	}
	if len(opts.Resources) == 0 {
		opts.Resources = []string{"secrets"}
	}
	if opts.PageSize <= 0 {
		opts.PageSize = 500
	}
	if opts.MaxOffenders == 0 {
		opts.MaxOffenders = 100
	}
	var rep Report
	type countKey struct {
		resource string
		class    Class
	}
	counts := map[countKey]int64{}
	for _, res := range opts.Resources {
		prefix, err := KeyPrefix(opts.EtcdPrefix, res)
		if err != nil {
			return rep, err
		}
		var scanned int64
		err = scanPrefix(ctx, kv, prefix, opts.PageSize, func(key string, value []byte) error {
			ns, name := splitKey(strings.TrimPrefix(key, prefix))
			o := Object{Key: key, Resource: res, Namespace: ns, Name: name, Class: Classify(value)}
			o.Offending = opts.Expect.Set() && !opts.Expect.Met(o.Class)
			rep.Total++
			scanned++
			ck := countKey{resource: res, class: o.Class}
			ck.class.Encoding = "" // one row for every plaintext encoding
			if ck.class.Problem != "" {
				ck.class.Problem = "damaged"
			}
			counts[ck]++
			if o.Offending {
				rep.OffenderCount++
				if len(rep.Offenders) < opts.MaxOffenders {
					rep.Offenders = append(rep.Offenders, o)
				}
			}
			if opts.Each != nil {
				return opts.Each(o)
			}
			return nil
		}, func() {
			if opts.Progress != nil {
				opts.Progress(res, scanned)
			}
		})
		if err != nil {
			return rep, fmt.Errorf("scan %s (%s): %w", res, prefix, err)
		}
	}
	for k, n := range counts {
		rep.Counts = append(rep.Counts, Count{
			Resource: k.resource, Type: k.class.Type, Provider: k.class.Provider,
			Key: k.class.Key, KeyID: k.class.KeyID, Problem: k.class.Problem != "", Objects: n,
		})
	}
	sort.Slice(rep.Counts, func(i, j int) bool {
		a, b := rep.Counts[i], rep.Counts[j]
		if a.Resource != b.Resource {
			return a.Resource < b.Resource
		}
		if a.Objects != b.Objects {
			return a.Objects > b.Objects
		}
		return a.Type+Type(a.Provider+a.Key+a.KeyID) < b.Type+Type(b.Provider+b.Key+b.KeyID)
	})
	return rep, nil
}

// scanPrefix calls fn for every key under prefix, in key order, reading
// pageSize values at a time, and page after every page.
func scanPrefix(ctx context.Context, kv KV, prefix string, pageSize int64, fn func(key string, value []byte) error, page func()) error {
	end := clientv3.GetPrefixRangeEnd(prefix)
	start := prefix
	for {
		resp, err := kv.Get(ctx, start, clientv3.WithRange(end), clientv3.WithLimit(pageSize))
		if err != nil {
			return err
		}
		for _, kv := range resp.Kvs {
			if err := fn(string(kv.Key), kv.Value); err != nil {
				return err
			}
		}
		page()
		if !resp.More || len(resp.Kvs) == 0 {
			return nil
		}
		// The next key after the last one read.
		start = string(resp.Kvs[len(resp.Kvs)-1].Key) + "\x00"
	}
}
