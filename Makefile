# kms-plugin: build, run and test. `make help` lists the targets.

VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -s -w -X github.com/kms-plugin/kms-plugin/kms.Version=$(VERSION)
BIN     := bin
# Linters are installed from the Go module proxy into a cache outside the repo.
TOOLS   := $(or $(KMS_PLUGIN_TOOLS_CACHE),$(HOME)/.cache/kms-plugin/tools)
STATICCHECK_VERSION := v0.8.2
STATICCHECK := $(TOOLS)/staticcheck-$(STATICCHECK_VERSION)/staticcheck
GO_TEST ?= go test
FUZZTIME ?= 30s

.PHONY: help run build test unit servers integration e2e lint fmt vet staticcheck fuzz bench clean

help: ## list targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

run: ## run the plugin on a local dev keyring (--dev); ARGS adds flags
	go run -ldflags "$(LDFLAGS)" ./cmd/kms-plugin --dev $(ARGS)

build: ## build bin/kms-plugin and bin/kmsctl (static, versioned)
	CGO_ENABLED=0 go build -trimpath -ldflags "$(LDFLAGS)" -o $(BIN)/ ./cmd/kms-plugin ./cmd/kmsctl

test: servers unit integration e2e ## every test: unit, Vault integration, end to end (builds the servers on first run)

unit: ## unit tests and plugin-binary tests, with the race detector
	$(GO_TEST) -race -count=1 ./...

servers: ## build etcd, kube-apiserver and Vault from the module proxy (cached by version)
	bash test/tools/build.sh all

integration: ## tests against a real Vault server
	$(GO_TEST) -tags integration -count=1 -timeout 30m ./providers/vault/... ./cmd/...

e2e: ## end-to-end tests on a real etcd + kube-apiserver + kms-plugin
	$(GO_TEST) -tags e2e -count=1 -timeout 45m ./test/e2e/...

lint: fmt vet staticcheck ## gofmt, go vet, staticcheck

fmt:
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi

vet:
	go vet ./...
	go vet -tags integration ./...
	go vet -tags e2e ./...

staticcheck: $(STATICCHECK)
	$(STATICCHECK) ./...
	$(STATICCHECK) -tags integration ./...
	$(STATICCHECK) -tags e2e ./...

$(STATICCHECK):
	GOBIN=$(dir $@) go install honnef.co/go/tools/cmd/staticcheck@$(STATICCHECK_VERSION)

fuzz: ## run each fuzz target for FUZZTIME (default 30s)
	go test ./kms/ -run '^$$' -fuzz '^FuzzDecrypt$$' -fuzztime $(FUZZTIME)
	go test ./kms/ -run '^$$' -fuzz '^FuzzParseEnvelope$$' -fuzztime $(FUZZTIME)
	go test ./providers/local/ -run '^$$' -fuzz '^FuzzParse$$' -fuzztime $(FUZZTIME)

bench: ## go benchmarks: the service against a no-op floor in the same run
	go test ./kms/ -run '^$$' -bench . -benchmem -count 3

clean:
	rm -rf $(BIN)
