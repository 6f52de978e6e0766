# syntax=docker/dockerfile:1
# kms-plugin and kmsctl, built static and shipped on distroless as non-root.
#
#   docker build -t kms-plugin:v0.1.0 --build-arg VERSION=v0.1.0 .
#   docker build --target pkcs11 -t kms-plugin:v0.1.0-pkcs11 --build-arg VERSION=v0.1.0 .
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

# The PKCS#11 variant (docker build --target pkcs11): cgo, so that the
# plugin can load a token's module, on a glibc base, because vendors ship
# their modules for glibc. Built on Debian 12 like its base, so that the
# binaries need no newer glibc than the base has. It builds on the target
# platform itself (cgo does not cross-compile without a cross C compiler).
# The command is the Makefile's, which CI runs too.
FROM golang:${GO_VERSION}-bookworm AS build-pkcs11
WORKDIR /src
COPY go.mod go.sum ./
RUN --mount=type=cache,target=/go/pkg/mod go mod download
COPY . .
ARG VERSION=dev
RUN --mount=type=cache,target=/go/pkg/mod --mount=type=cache,target=/root/.cache/go-build make build-pkcs11 VERSION=${VERSION} BIN=/out

FROM gcr.io/distroless/base-debian12:nonroot AS pkcs11
COPY --from=build-pkcs11 /out/pkcs11/kms-plugin /out/pkcs11/kmsctl /usr/local/bin/
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/kms-plugin"]

# The default image: static, no cgo; it must stay the last stage.
FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/kms-plugin /out/kmsctl /usr/local/bin/
# The distroless nonroot user; deploy/static-pod/kms-plugin.yaml runs as the
# same uid/gid and the node's socket and keyring directories belong to it.
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/kms-plugin"]
