#!/usr/bin/env bash
# fuzz-short.sh runs each fuzz target of outside input for a short time (FUZZTIME, default 10000x),
# one after the other (go test -fuzz takes one target per run). CI runs it before the tests; a
# failure leaves the crashing input under the package's testdata/fuzz/ for `go test` to replay.
set -euo pipefail
cd "$(dirname "$0")/.."
# A count, not a duration: with a duration Go's fuzz coordinator (go1.26) can report its own
# -fuzztime deadline as a failure, "context deadline exceeded" with no crasher (golang/go#75804,
# fixed in go1.27; seen in this script's CI run of FuzzLastEventID). 10,000 executions take
# 2-14 s per target here (they ran 7k-56k in 10 s).
FUZZTIME=${FUZZTIME:-10000x}

# package  target — the parsers a client reaches: the router's request handling, the API node's
# bodies, queries, cursors and headers, tokens.
targets=(
  "./internal/api FuzzDecodeRecordBody"
  "./internal/api FuzzListQuery"
  "./internal/api FuzzCursor"
  "./internal/api FuzzReadPref"
  "./internal/api FuzzLastEventID"
  "./internal/api FuzzAppendRecordJSON"
  "./internal/auth FuzzVerify"
  "./internal/jsonlog FuzzLineMatchesSlog"
  "./internal/router FuzzDecodeCreateTenant"
  "./internal/router FuzzDecodeMoveRequest"
  "./internal/router FuzzTenantCursor"
  "./internal/router FuzzRouterRequest"
  "./internal/router FuzzParseNative"
  "./replication FuzzDecodeToken"
)
for t in "${targets[@]}"; do
  read -r pkg name <<<"$t"
  echo "fuzz: $pkg $name ($FUZZTIME)"
  go test -run '^$' -fuzz "^${name}\$" -fuzztime "$FUZZTIME" "$pkg"
done
