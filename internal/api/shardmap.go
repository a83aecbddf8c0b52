package api

import (
	"context"
	"time"
)

// Route is where the node's shard map places a tenant.
type Route struct {
	Shard      string
	HomeRegion string
	Epoch      uint64
	MapVersion uint64 // version of the map snapshot that answered
}

// ShardInfo is one shard of the map: its database and the host:port of its copy per region.
type ShardInfo struct {
	ID, HomeRegion, Database string
	Endpoints                map[string]string
}

// ShardMap is what the node needs from the shard map (a shardmap.Client adapted by cmd/api).
// Lookup and Version are answered from the local copy and never block.
type ShardMap interface {
	Lookup(tenant string) (Route, error)
	ShardInfo(id string) (ShardInfo, bool)
	Shards() []ShardInfo
	Version() uint64
	// WaitVersion blocks until the local copy has at least version v.
	WaitVersion(ctx context.Context, v uint64) error
	// Age is the time since the local copy was last confirmed current.
	Age() time.Duration
}
