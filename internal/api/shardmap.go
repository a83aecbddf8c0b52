package api

import (
	"context"
	"time"

	"github.com/meridian-dev/meridian/internal/records"
)

// Route is where the node's shard map places a tenant.
type Route struct {
	Shard      string
	HomeRegion string
	Epoch      uint64 // the tenant's write epoch (1 until its first move's cutover)
	MapVersion uint64 // version of the map snapshot that answered
	// MirrorTo is the target shard of the tenant's move while the move is in dual_write,
	// backfill or verify ("" otherwise): writes are mirrored there (records.Target.MirrorTo).
	MirrorTo string
}

// ShardMap is what the node needs from the shard map (a shardmap.Client adapted by
// mapsource.Adapter). Every method but WaitVersion is answered from the local copy and never
// blocks.
type ShardMap interface {
	Lookup(tenant string) (Route, error)
	// ShardHome returns the home region of shard id, and false when the map has no such shard.
	ShardHome(id string) (region string, ok bool)
	// ShardIDs lists the map's shards (readiness checks each).
	ShardIDs() []string
	Version() uint64
	// WaitVersion blocks until the local copy has at least version v.
	WaitVersion(ctx context.Context, v uint64) error
	// Age is the time since the local copy was last confirmed current.
	Age() time.Duration
}

// Records is what the /v1 handlers need from the records store (internal/records/pgstore).
// Errors are the records package's sentinels and *records.ValueError; failWith maps them.
type Records interface {
	Get(ctx context.Context, t records.Target, ro records.ReadOptions, coll, id string) (records.Record, records.ReadInfo, error)
	List(ctx context.Context, t records.Target, ro records.ReadOptions, coll string, q records.ListQuery) (records.Page, records.ReadInfo, error)
	GetMany(ctx context.Context, t records.Target, ro records.ReadOptions, coll string, ids, fields []string) ([]records.Record, records.ReadInfo, error)
	Write(ctx context.Context, t records.Target, op records.WriteOp) (records.WriteResult, error)
}

// Tenants is what the /internal handlers and /readyz need from the records store.
type Tenants interface {
	CreateTenant(ctx context.Context, tenant, shard string) (created bool, err error)
	Tenant(ctx context.Context, tenant, shard string) (records.TenantRow, error)
	// ListTenants lists the tenants with a row on shard after an id, in id order
	// (records.ErrNoWorkerRole when the store has no cross-tenant connections).
	ListTenants(ctx context.Context, shard, after string, limit int) ([]records.TenantStatus, error)
	// Ping checks that the shard's primary answers.
	Ping(ctx context.Context, shard string) error
}

// Store is the records store as the node uses it.
type Store interface {
	Records
	Tenants
}
