# Meridian — make targets. `make demo` and `make test` are the two commands a new user needs;
# both depend on `make deps`, which installs missing Debian packages and nothing else.
SHELL := /bin/bash
GO ?= go
STATICCHECK_VERSION ?= v0.8.2
# TEST_TIMEOUT bounds one package's test binary; CI as a whole must stay under 20 minutes. It
# counts a cluster suite's wait for the other (localsrv.Exclusive: internal/faults/suite and
# internal/moves/systemtest run their clusters one at a time), hence more than either needs.
TEST_TIMEOUT ?= 30m
# TEST_P is how many packages' tests run at once (the machine has 2 cores).
TEST_P ?= 2

.PHONY: all deps build test test-short lint fuzz-short fmt vet bench clean up down demo faults

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

# fuzz-short runs every fuzz target of outside input for FUZZTIME each (default 10s; CI runs it).
fuzz-short:
	@./scripts/fuzz-short.sh

# up starts the local three-region cluster in the background (LATENCY=1 adds the cross-region
# round trips); down stops it; demo brings it up with latency if it is not running and shows it.
up: deps build
	./bin/sim up $(if $(LATENCY),--latency)

down:
	@if [ -x ./bin/sim ]; then ./bin/sim down; else echo "no cluster running"; fi

demo: deps build
	@if [ -f .meridian/sim.pid ] && kill -0 $$(cat .meridian/sim.pid) 2>/dev/null; then \
		echo "cluster already running (make down stops it)"; \
	else ./bin/sim up --latency; fi
	./bin/sim demo

# faults runs the fault suite (docs/RELIABILITY.md) for DURATION (default 60s) with SEED (default:
# from the clock): against the cluster `make up LATENCY=1` runs, or one of its own on shifted ports.
faults: deps build
	./bin/faults -duration $(or $(DURATION),60s) $(if $(SEED),-seed $(SEED))

clean:
	rm -rf bin .meridian .meridian-faults
