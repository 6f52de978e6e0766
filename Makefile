# kms-plugin: build, run and test. `make help` lists the targets.

# Every build, test and tool here runs on the patched Go toolchain that
# go.mod's toolchain line names, fetched from the Go module proxy on first
# use: the machine's own Go may lack security fixes (make vulncheck).
GO_TOOLCHAIN := $(shell awk '$$1 == "toolchain" {print $$2}' go.mod)
export GOTOOLCHAIN := $(GO_TOOLCHAIN)

VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -s -w -X github.com/kms-plugin/kms-plugin/kms.Version=$(VERSION)
BIN     := bin
# Linters are installed from the Go module proxy into a cache outside the repo.
TOOLS   := $(or $(KMS_PLUGIN_TOOLS_CACHE),$(HOME)/.cache/kms-plugin/tools)
GOLANGCI_LINT_VERSION := v2.15.0
GOLANGCI_LINT := $(TOOLS)/golangci-lint-$(GOLANGCI_LINT_VERSION)-$(GO_TOOLCHAIN)/golangci-lint
CYCLONEDX_GOMOD_VERSION := v1.10.0
CYCLONEDX_GOMOD := $(TOOLS)/cyclonedx-gomod-$(CYCLONEDX_GOMOD_VERSION)/cyclonedx-gomod
# The admin API's generated code: protoc from Debian's protobuf-compiler
# (with libprotobuf-dev for the well-known types), plugins pinned here.
PROTOC_GEN_GO_VERSION := v1.36.12
PROTOC_GEN_GO := $(TOOLS)/protoc-gen-go-$(PROTOC_GEN_GO_VERSION)/protoc-gen-go
PROTOC_GEN_GO_GRPC_VERSION := v1.6.2
PROTOC_GEN_GO_GRPC := $(TOOLS)/protoc-gen-go-grpc-$(PROTOC_GEN_GO_GRPC_VERSION)/protoc-gen-go-grpc
PROTOS := kmsplugin/admin/v1/admin.proto
# The Go vulnerability database, offline: golang.org/x/vulndb at a pinned
# version, indexed by its cmd/indexdb, read by govulncheck with -db file://.
# make vulndb-update moves the pin to the newest version the proxy serves.
VULNDB_VERSION := v0.0.0-20261105234957-e22db6528018
VULNDB := $(TOOLS)/vulndb-$(VULNDB_VERSION)
INDEXDB := $(TOOLS)/indexdb-$(VULNDB_VERSION)-$(GO_TOOLCHAIN)/indexdb
GOVULNCHECK_VERSION := v1.9.0
GOVULNCHECK := $(TOOLS)/govulncheck-$(GOVULNCHECK_VERSION)-$(GO_TOOLCHAIN)/govulncheck
# Release artifacts: static binaries, SBOMs, SHA256SUMS and the
# vulnerability report, per platform, in $(DIST).
RELEASE_PLATFORMS ?= linux/amd64 linux/arm64
DIST ?= dist/$(VERSION)
GO_TEST ?= go test
FUZZTIME ?= 30s
SOAK_DURATION ?= 2m
# Build tags that select tests against real servers, and the cgo PKCS#11
# provider (alone, and with the suites that have PKCS#11 parts); lint and
# vet see them all.
TAGS := integration e2e soak bench release pkcs11 e2e,pkcs11 bench,pkcs11

.PHONY: help run build build-pkcs11 test unit servers integration e2e pkcs11 e2e-pkcs11 soak lint fmt vet golangci-lint fuzz bench gobench sbom proto proto-check vulncheck vulndb-update release release-binaries release-check clean

help: ## list targets
	@grep -E '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

run: ## run the plugin on a local dev keyring (--dev); ARGS adds flags
	go run -ldflags "$(LDFLAGS)" ./cmd/kms-plugin --dev $(ARGS)

build: ## build bin/kms-plugin and bin/kmsctl (static, versioned)
	CGO_ENABLED=0 go build -trimpath -ldflags "$(LDFLAGS)" -o $(BIN)/ ./cmd/kms-plugin ./cmd/kmsctl

build-pkcs11: ## build bin/pkcs11/kms-plugin and kmsctl with the PKCS#11 provider (cgo, glibc; needs a C compiler)
	CGO_ENABLED=1 go build -tags pkcs11 -trimpath -ldflags "$(LDFLAGS)" -o $(BIN)/pkcs11/ ./cmd/kms-plugin ./cmd/kmsctl

test: servers unit integration e2e pkcs11 e2e-pkcs11 ## every test: unit, Vault integration, end to end, PKCS#11 on SoftHSM (builds the servers on first run)

unit: ## unit tests and plugin-binary tests, with the race detector
	$(GO_TEST) -race -count=1 ./...

servers: ## build etcd, kube-apiserver, kube-controller-manager and Vault from the module proxy (cached by version)
	bash test/tools/build.sh all

integration: ## tests against a real Vault server (provider, kmsctl, conformance, deploy scripts, leaks, faults)
	$(GO_TEST) -tags integration -count=1 -timeout 30m ./providers/vault/... ./cmd/... ./conformance/... ./deploy/ ./test/leak/ ./test/faults/

e2e: ## end-to-end tests on a real etcd + kube-apiserver + kms-plugin
	$(GO_TEST) -tags e2e -count=1 -timeout 45m ./test/e2e/...

# The PKCS#11 provider's tests need SoftHSM (apt-get install softhsm2); with
# the pkcs11 tag a missing SoftHSM fails them, it never skips them.
PKCS11_RUN := PKCS11|Pkcs11|SoftHSM

pkcs11: ## PKCS#11 provider on SoftHSM tokens: unit, providertest, kmsctl, conformance, leaks, faults (-tags pkcs11)
	$(GO_TEST) -race -tags pkcs11 -count=1 ./providers/pkcs11/... ./rotation/
	$(GO_TEST) -race -tags pkcs11 -count=1 -timeout 20m -run '$(PKCS11_RUN)' ./cmd/... ./conformance/... ./test/leak/ ./test/faults/

e2e-pkcs11: ## end to end on a real etcd + kube-apiserver with kms-plugin --provider pkcs11 (-tags 'e2e pkcs11')
	$(GO_TEST) -tags 'e2e pkcs11' -count=1 -timeout 30m -run '$(PKCS11_RUN)' ./test/e2e/...

soak: ## about SOAK_DURATION at concurrency 64 with a keyring rotation every 20 s
	KMS_PLUGIN_SOAK_DURATION=$(SOAK_DURATION) $(GO_TEST) -tags soak -count=1 -timeout 10m -v ./test/soak/

lint: fmt vet golangci-lint ## gofmt, go vet, golangci-lint (staticcheck, gosec, errorlint, revive)

fmt:
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi

vet:
	go vet ./...
	@for tag in $(TAGS); do echo "go vet -tags $$tag ./..."; go vet -tags $$tag ./... || exit 1; done

golangci-lint: $(GOLANGCI_LINT)
	$(GOLANGCI_LINT) run ./...

$(GOLANGCI_LINT):
	GOBIN=$(dir $@) go install github.com/golangci/golangci-lint/v2/cmd/golangci-lint@$(GOLANGCI_LINT_VERSION)

# Each fuzz target: package and name.
FUZZ_TARGETS := \
	kms:FuzzDecrypt kms:FuzzParseEnvelope providers/local:FuzzParse \
	providers/vault:FuzzVaultHTTPResponse providers/vault:FuzzClassifyResponse \
	providers/vault:FuzzTransitCiphertext providers/vault:FuzzParseRef providers/vault:FuzzParseKeyMetadata \
	providers/pkcs11:FuzzParse \
	rotation/verify:FuzzClassify rotation/verify:FuzzClassifyKMSv2

fuzz: ## run each fuzz target for FUZZTIME (default 30s)
	@for t in $(FUZZ_TARGETS); do pkg=$${t%%:*}; name=$${t#*:}; \
	  echo "go test ./$$pkg/ -fuzz $$name -fuzztime $(FUZZTIME)"; \
	  go test ./$$pkg/ -run '^$$' -fuzz "^$$name\$$" -fuzztime $(FUZZTIME) || exit 1; done

sbom: $(CYCLONEDX_GOMOD) ## CycloneDX SBOMs of the release binaries into bin/
	mkdir -p $(BIN)
	CGO_ENABLED=0 GOOS=linux GOARCH=amd64 $(CYCLONEDX_GOMOD) app -json -licenses -noserial -notimestamp -main cmd/kms-plugin -output $(BIN)/kms-plugin.cdx.json .
	CGO_ENABLED=0 GOOS=linux GOARCH=amd64 $(CYCLONEDX_GOMOD) app -json -licenses -noserial -notimestamp -main cmd/kmsctl -output $(BIN)/kmsctl.cdx.json .

$(CYCLONEDX_GOMOD):
	GOBIN=$(dir $@) go install github.com/CycloneDX/cyclonedx-gomod/cmd/cyclonedx-gomod@$(CYCLONEDX_GOMOD_VERSION)

bench: ## benchmark suite: one table of side-by-side ratios, PKCS#11 on SoftHSM included (BENCHFLAGS=-short for a quick run)
	go test -tags 'bench pkcs11' -count=1 -timeout 30m -v -run '^TestBench$$' ./test/bench $(BENCHFLAGS)

gobench: ## go benchmarks (envelope, interceptor, socket round trip beside the no-op floor)
	go test ./kms/ ./bench/ -run '^$$' -bench . -benchmem -count 3

proto: $(PROTOC_GEN_GO) $(PROTOC_GEN_GO_GRPC) ## regenerate the Go code of proto/ (needs protoc: apt-get install protobuf-compiler libprotobuf-dev)
	protoc -I proto -I /usr/include \
	  --plugin=protoc-gen-go=$(PROTOC_GEN_GO) --go_out=proto --go_opt=paths=source_relative \
	  --plugin=protoc-gen-go-grpc=$(PROTOC_GEN_GO_GRPC) --go-grpc_out=proto --go-grpc_opt=paths=source_relative \
	  $(PROTOS)

proto-check: proto ## fail if the committed generated code differs from what make proto writes
	@if [ -n "$$(git status --porcelain -- proto/)" ]; then git status --short -- proto/; git diff -- proto/ | head -40; \
	  echo "proto/: the generated code differs from what make proto writes; run make proto and commit it"; exit 1; fi

$(PROTOC_GEN_GO):
	GOBIN=$(dir $@) go install google.golang.org/protobuf/cmd/protoc-gen-go@$(PROTOC_GEN_GO_VERSION)

$(PROTOC_GEN_GO_GRPC):
	GOBIN=$(dir $@) go install google.golang.org/grpc/cmd/protoc-gen-go-grpc@$(PROTOC_GEN_GO_GRPC_VERSION)

vulncheck: build $(GOVULNCHECK) $(VULNDB)/index/db.json ## govulncheck over the source and the release binaries, offline; fails on any reachable vulnerability
	@echo "vulnerability database: golang.org/x/vulndb@$(VULNDB_VERSION)"
	@grep -q "golang.org/x/vulndb@$(VULNDB_VERSION)" README.md || { echo "README.md's security section names another database than $(VULNDB_VERSION): update it"; exit 1; }
	$(GOVULNCHECK) -db file://$(VULNDB) -show verbose ./...
	$(GOVULNCHECK) -db file://$(VULNDB) -mode binary -show verbose $(BIN)/kms-plugin
	$(GOVULNCHECK) -db file://$(VULNDB) -mode binary -show verbose $(BIN)/kmsctl

$(GOVULNCHECK):
	GOBIN=$(dir $@) go install golang.org/x/vuln/cmd/govulncheck@$(GOVULNCHECK_VERSION)

$(INDEXDB):
	GOBIN=$(dir $@) go install golang.org/x/vulndb/cmd/indexdb@$(VULNDB_VERSION)

# The database is written to a temporary name first, so that an interrupted
# run never leaves a partial one in the cache.
$(VULNDB)/index/db.json: $(INDEXDB)
	@mkdir -p $(TOOLS)
	src=$$(cd $(TOOLS) && GOFLAGS=-mod=mod go mod download -json golang.org/x/vulndb@$(VULNDB_VERSION) | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$$/\1/p') && \
	  test -d "$$src/data/osv" && rm -rf $(VULNDB).tmp && \
	  $(INDEXDB) -vulns $$src/data/osv -out $(VULNDB).tmp && rm -rf $(VULNDB) && mv $(VULNDB).tmp $(VULNDB)

vulndb-update: ## move the vulnerability database pin to the newest golang.org/x/vulndb
	v=$$(cd $(TOOLS) && go list -m -json golang.org/x/vulndb@latest | sed -n 's/^[[:space:]]*"Version": "\(.*\)",$$/\1/p') && \
	  test -n "$$v" && sed -i "s/^VULNDB_VERSION := .*/VULNDB_VERSION := $$v/" Makefile && \
	  echo "VULNDB_VERSION is now $$v; run make vulncheck and update the README's security section"

release-binaries: ## static binaries for RELEASE_PLATFORMS in DIST (reproducible: -trimpath, no VCS stamp, version from the tag or revision)
	@mkdir -p $(DIST)
	@for p in $(RELEASE_PLATFORMS); do os=$${p%/*}; arch=$${p#*/}; \
	  echo "go build $$os/$$arch"; \
	  CGO_ENABLED=0 GOOS=$$os GOARCH=$$arch go build -trimpath -buildvcs=false -ldflags "$(LDFLAGS)" \
	    -o $(DIST)/$$os-$$arch/ ./cmd/kms-plugin ./cmd/kmsctl || exit 1; done

release: release-binaries $(CYCLONEDX_GOMOD) $(GOVULNCHECK) $(VULNDB)/index/db.json ## release artifacts in DIST: binaries, SBOMs, vulnerability reports, SHA256SUMS
	@for p in $(RELEASE_PLATFORMS); do os=$${p%/*}; arch=$${p#*/}; d=$(DIST)/$$os-$$arch; \
	  for c in kms-plugin kmsctl; do \
	    CGO_ENABLED=0 GOOS=$$os GOARCH=$$arch $(CYCLONEDX_GOMOD) app -json -licenses -noserial -notimestamp -main cmd/$$c -output $$d/$$c.cdx.json . || exit 1; \
	    $(GOVULNCHECK) -db file://$(VULNDB) -mode binary -show verbose $$d/$$c > $$d/$$c.vulncheck.txt \
	      || { cat $$d/$$c.vulncheck.txt; echo "$$d/$$c: reachable vulnerabilities; not releasing"; exit 1; }; \
	  done; done
	cd $(DIST) && find . -type f ! -name SHA256SUMS -printf '%P\n' | LC_ALL=C sort | xargs sha256sum > SHA256SUMS
	@echo "release $(VERSION) in $(DIST); verify with: cd $(DIST) && sha256sum -c SHA256SUMS"

release-check: ## build this commit's release binaries twice, in two clones with separate build caches, and compare them byte for byte
	$(GO_TEST) -tags release -count=1 -timeout 30m -v ./test/release/

clean:
	rm -rf $(BIN) dist
