// Package mapsource adapts the shard map's watching client (shardmap.Client) to the small
// interfaces the data node's parts declare: api.ShardMap (routing) and pgstore.Map (the records
// store's shard endpoints). It holds no state of its own and must never modify the map; tests
// of internal/api and pgstore use fakes of those interfaces instead, and this adapter is tested
// against a real decoded shardmap.Map.
package mapsource

import (
	"context"
	"time"

	"github.com/meridian-dev/meridian/internal/api"
	"github.com/meridian-dev/meridian/internal/records/pgstore"
	"github.com/meridian-dev/meridian/internal/shards"
	"github.com/meridian-dev/meridian/shardmap"
)

// Source is the subset of *shardmap.Client the adapter uses.
type Source interface {
	Map() *shardmap.Map
	WaitVersion(ctx context.Context, v uint64) error
	Age() time.Duration
}

var _ Source = (*shardmap.Client)(nil)

// Adapter implements api.ShardMap and pgstore.Map over a Source.
type Adapter struct{ Src Source }

var (
	_ api.ShardMap = Adapter{}
	_ pgstore.Map  = Adapter{}
)

// Lookup resolves tenant on the current snapshot. While the tenant's move is in dual_write,
// backfill or verify, the route's MirrorTo is the move's target shard.
func (a Adapter) Lookup(tenant string) (api.Route, error) {
	m := a.Src.Map()
	r, err := m.Lookup(tenant)
	if err != nil {
		return api.Route{}, err
	}
	rt := api.Route{Shard: r.Shard, HomeRegion: r.HomeRegion, Epoch: r.Epoch, MapVersion: m.Version()}
	if r.Moving { // only then: finding the move costs more than the lookup
		if mv, ok := m.ActiveMove(tenant); ok && mirrored(mv.Phase) && mv.From == r.Shard && mv.To != r.Shard {
			rt.MirrorTo = mv.To
		}
	}
	return rt, nil
}

// mirrored reports whether a move in phase p mirrors the tenant's writes to its target: from
// dual_write until the cutover fences the source (requested has no target row yet; from the
// cutover on the target is the tenant's home).
func mirrored(p shardmap.Phase) bool {
	return p == shardmap.PhaseDualWrite || p == shardmap.PhaseBackfill || p == shardmap.PhaseVerify
}

func convert(s shardmap.Shard) shards.Info {
	return shards.Info{ID: s.ID, HomeRegion: s.HomeRegion, Database: s.Database, Endpoints: s.Endpoints}
}

// ShardHome returns the home region of one shard of the current snapshot.
func (a Adapter) ShardHome(id string) (string, bool) {
	s, ok := a.Src.Map().Shard(id)
	return s.HomeRegion, ok
}

// ShardIDs lists the shards of the current snapshot.
func (a Adapter) ShardIDs() []string {
	var out []string
	for _, s := range a.Src.Map().Shards() {
		out = append(out, s.ID)
	}
	return out
}

// ShardInfo returns one shard of the current snapshot.
func (a Adapter) ShardInfo(id string) (shards.Info, bool) {
	s, ok := a.Src.Map().Shard(id)
	return convert(s), ok
}

// Shards returns every shard of the current snapshot.
func (a Adapter) Shards() []shards.Info {
	var out []shards.Info
	for _, s := range a.Src.Map().Shards() {
		out = append(out, convert(s))
	}
	return out
}

// Version is the current snapshot's version.
func (a Adapter) Version() uint64 { return a.Src.Map().Version() }

// WaitVersion waits for version v.
func (a Adapter) WaitVersion(ctx context.Context, v uint64) error { return a.Src.WaitVersion(ctx, v) }

// Age is the time since the map was last confirmed.
func (a Adapter) Age() time.Duration { return a.Src.Age() }
