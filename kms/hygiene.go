package kms

import (
	"google.golang.org/grpc/encoding"
	"google.golang.org/grpc/encoding/proto"
	"google.golang.org/grpc/mem"
	kmsapi "k8s.io/kms/apis/v2"
)

// zeroingCodec is gRPC's protobuf codec that clears a DecryptResponse's
// plaintext (a DEK seed) as soon as it has been serialised, so the seed
// does not linger in the heap until the garbage collector reuses it. The
// serialised copy lives in gRPC's pooled buffers, beyond our reach; see
// docs/security.md for what Go can and cannot guarantee.
type zeroingCodec struct{ encoding.CodecV2 }

func newZeroingCodec() zeroingCodec {
	return zeroingCodec{encoding.GetCodecV2(proto.Name)}
}

// Marshal serialises v, then clears a DecryptResponse's plaintext.
func (c zeroingCodec) Marshal(v any) (mem.BufferSlice, error) {
	out, err := c.CodecV2.Marshal(v)
	if r, ok := v.(*kmsapi.DecryptResponse); ok {
		clear(r.Plaintext)
	}
	return out, err
}

// clearRequest clears an EncryptRequest's plaintext (a DEK seed) once the
// call is done with it.
func clearRequest(req any) {
	if r, ok := req.(*kmsapi.EncryptRequest); ok {
		clear(r.Plaintext)
	}
}
