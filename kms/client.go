package kms

import (
	"context"
	"fmt"
	"net"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	kmsapi "k8s.io/kms/apis/v2"
)

// Dial connects a KMS v2 client to the plugin at endpoint ("unix:///path"
// or "unix:///@name"). The connection is local to the node, so it carries
// no TLS: the socket's file mode is the access control.
func Dial(endpoint string) (kmsapi.KeyManagementServiceClient, *grpc.ClientConn, error) {
	ep, err := ParseEndpoint(endpoint)
	if err != nil {
		return nil, nil, err
	}
	conn, err := grpc.NewClient("passthrough:///"+ep.String(),
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return dialContext(ctx, ep) }),
	)
	if err != nil {
		return nil, nil, fmt.Errorf("connect to %s: %w", ep, err)
	}
	return kmsapi.NewKeyManagementServiceClient(conn), conn, nil
}
