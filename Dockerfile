# syntax=docker/dockerfile:1
# kms-plugin and kmsctl, built static and shipped on distroless as non-root.
#
#   docker build -t kms-plugin:v0.1.0 --build-arg VERSION=v0.1.0 .
#
# The go build command below is run as-is by deploy's TestDockerfileBuild
# (go test ./deploy/), which checks that it yields static binaries that
# print VERSION, because CI has no Docker engine. Keep it one RUN line
# that works with only VERSION, TARGETOS, TARGETARCH and OUT set.

# In step with the toolchain line of go.mod (TestDockerfileGoVersion).
ARG GO_VERSION=1.27.3

FROM --platform=$BUILDPLATFORM golang:${GO_VERSION} AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN --mount=type=cache,target=/go/pkg/mod go mod download
COPY . .
ARG VERSION=dev
ARG TARGETOS=linux
ARG TARGETARCH=amd64
ARG OUT=/out
# build-command
RUN --mount=type=cache,target=/go/pkg/mod --mount=type=cache,target=/root/.cache/go-build CGO_ENABLED=0 GOOS=${TARGETOS} GOARCH=${TARGETARCH} go build -trimpath -ldflags "-s -w -X github.com/kms-plugin/kms-plugin/kms.Version=${VERSION}" -o ${OUT}/ ./cmd/kms-plugin ./cmd/kmsctl

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/kms-plugin /out/kmsctl /usr/local/bin/
# The distroless nonroot user; deploy/static-pod/kms-plugin.yaml runs as the
# same uid/gid and the node's socket and keyring directories belong to it.
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/kms-plugin"]
