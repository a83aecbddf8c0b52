// Package systemtest holds the router's system tests: real routers (each embedding a shard-map
// Raft voter), real API nodes (internal/api), real Postgres and Redis from internal/testenv,
// three regions on loopback. It has no non-test code; run it with
// `go test ./internal/router/systemtest/`.
package systemtest
