# Meridian — make targets. `make demo` and `make test` are the two commands a new user needs;
# both depend on `make deps`, which installs missing Debian packages and nothing else.
SHELL := /bin/bash
GO ?= go
STATICCHECK_VERSION ?= v0.8.2
# TEST_TIMEOUT bounds one package's test binary; CI as a whole must stay under 20 minutes.
TEST_TIMEOUT ?= 15m
# TEST_P is how many packages' tests run at once (the machine has 2 cores).
TEST_P ?= 2

.PHONY: all deps build test test-short lint fmt vet bench clean

all: build

deps:
	@./scripts/deps.sh

build:
	$(GO) build -o bin/ ./cmd/...

vet:
	$(GO) vet ./...

# test: vet, then every package's tests with the race detector. go test's output stays last.
test: deps vet
	$(GO) test -race -count=1 -p $(TEST_P) -timeout $(TEST_TIMEOUT) ./...

test-short: deps
	$(GO) test -count=1 -short ./...

fmt:
	gofmt -w $$(git ls-files '*.go')

lint: vet
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) run honnef.co/go/tools/cmd/staticcheck@$(STATICCHECK_VERSION) ./...

clean:
	rm -rf bin .meridian
