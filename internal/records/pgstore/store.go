// Package pgstore is the API node's records store: every pgx transaction and batch the node
// runs against its shards. A write is one transaction on the shard's primary — tenant setting
// for row-level security, the tenant row lock that checks the fence and numbers the change,
// Idempotency-Key claim or replay, the change, the outbox append, the stored response, commit —
// followed by the Consistency-Token's WAL position. A read is one round trip (a read-only,
// tenant-scoped batch with the tenant check and, for a Consistency-Token, the replay check) on
// the source the read-source decision picks, and reports the WAL position its data is at least
// as new as (ReadInfo.LSN). Every write notifies NotifyChannel for the shard's outbox relay;
// Changes and ChangeSeq read the outbox for the event consumer and /v1/changes. It also owns
// the internal tenant rows and the expired Idempotency-Key cleanup job, and a tenant move's
// steps in Postgres (moves.go: the dual-write mirror, copy, verify, repair, fence, finish, drop).
//
// Its vocabulary (targets, records, options, results, sentinel errors) is package
// internal/records, so the HTTP layer never imports pgx. The store must never speak HTTP, never
// run a statement outside its tenant's scope (except the worker role's cleanup) and never take
// a client's write on a shard homed in another region (a move's mirror and steps do write the
// other shard's primary, wherever it is homed: that is the move). Tests run it against real Postgres clusters (and a real
// streaming standby) from internal/testenv with migrations applied; only the shard map is a fake
// of Map.
package pgstore

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/meridian-dev/meridian/internal/records"
	"github.com/meridian-dev/meridian/internal/shards"
	"github.com/meridian-dev/meridian/replication"
)

// Map is what the store needs from the node's shard map (mapsource.Adapter implements it over
// the watching client). It is answered from the local copy and never blocks.
type Map interface {
	ShardInfo(id string) (shards.Info, bool)
	Shards() []shards.Info
}

// Config configures a Store. Zero values take the documented defaults.
type Config struct {
	Region string        // this node's region (required)
	Map    Map           // the node's shard map (required)
	Conns  *shards.Conns // connections as migrations.AppRole (required)
	// Workers are connections as migrations.WorkerRole, which may delete expired
	// Idempotency-Key rows of every tenant. nil = the cleanup job purges only the tenants this
	// store has stored keys for since it started (the app role sees one tenant at a time).
	Workers *shards.Conns
	IdemTTL time.Duration // Idempotency-Key lifetime; 0 = 24h
	// Standby reads (DESIGN.md §6), decided by replication.Policy.Choose.
	MaxStaleness time.Duration // most a standby may lag and serve a default read; 0 = 5s
	RYWWait      time.Duration // how long a read waits for the standby to replay its token; 0 = 100ms, <0 = no wait
	// Tracker tracks the health of the standbys reads use; pass the node's one so its gossip
	// publisher can report Tracker.Lag. nil = a tracker of the store's own, configured by
	// StandbyInterval (0 = 250ms) and StandbyFailures (0 = 3).
	Tracker         *replication.Tracker
	StandbyInterval time.Duration
	StandbyFailures int
	// MirrorTimeout bounds a write's mirror to a move's target shard (Store.Write), which runs
	// after the write has committed and before the client gets its answer; 0 = 2s.
	MirrorTimeout time.Duration
	Logger        *slog.Logger // nil = slog.Default()
	Now           func() time.Time
}

// Store runs the node's reads and writes on its shards. It is safe for concurrent use.
type Store struct {
	cfg     Config
	log     *slog.Logger
	policy  replication.Policy
	tracker *replication.Tracker

	keyMu sync.Mutex
	// keyTenants (shard -> tenants) is guarded by keyMu: tenants with stored keys, for cleanup.
	keyTenants map[string]map[string]struct{}

	// mirrors are the group-commit queues of the dual write, one per target shard (mirror.go).
	mirrors mirrorQueues
}

// New builds a Store.
func New(cfg Config) (*Store, error) {
	if cfg.Region == "" || cfg.Map == nil || cfg.Conns == nil {
		return nil, errors.New("pgstore: Region, Map and Conns are required")
	}
	if cfg.IdemTTL == 0 {
		cfg.IdemTTL = 24 * time.Hour
	}
	if cfg.Tracker == nil {
		cfg.Tracker = replication.NewTracker(replication.TrackerConfig{Interval: cfg.StandbyInterval, Failures: cfg.StandbyFailures})
	}
	if cfg.MirrorTimeout == 0 {
		cfg.MirrorTimeout = 2 * time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	return &Store{cfg: cfg, log: cfg.Logger.With("region", cfg.Region), tracker: cfg.Tracker,
		policy: replication.Policy{MaxStaleness: cfg.MaxStaleness, ReplayWait: cfg.RYWWait}}, nil
}

// shard resolves a shard id through the map.
func (s *Store) shard(id string) (shards.Info, error) {
	sh, ok := s.cfg.Map.ShardInfo(id)
	if !ok {
		return shards.Info{}, fmt.Errorf("%w: %s", records.ErrUnknownShard, id)
	}
	return sh, nil
}

// primary resolves a shard id to its primary's pool.
func (s *Store) primary(ctx context.Context, id string) (shards.Info, *pgxpool.Pool, error) {
	sh, err := s.shard(id)
	if err != nil {
		return sh, nil, err
	}
	pool, err := s.cfg.Conns.Primary(ctx, sh)
	return sh, pool, err
}

// Ping checks that the shard's primary answers (readiness).
func (s *Store) Ping(ctx context.Context, shard string) error {
	_, pool, err := s.primary(ctx, shard)
	if err != nil {
		return err
	}
	return pool.Ping(ctx)
}

// classify turns a database error into the store's vocabulary, keeping the original wrapped.
// Errors that are already the store's, context errors and connection failures pass unchanged.
func classify(err error) error {
	var pe *pgconn.PgError
	switch {
	case err == nil:
		return nil
	case errors.As(err, &pe) && (strings.HasPrefix(pe.Code, "22") || strings.HasPrefix(pe.Code, "54")):
		return &records.ValueError{Message: pe.Message, Err: err}
	case errors.As(err, &pe) && pe.Code == "57014":
		return fmt.Errorf("%w: %w", records.ErrTimeout, err)
	case errors.As(err, &pe) && (pe.Code == "40001" || pe.Code == "40P01" || pe.Code == "55P03"):
		return fmt.Errorf("%w: %w", records.ErrConflict, err)
	case errors.As(err, &pe):
		return fmt.Errorf("%w: %w", records.ErrDatabase, err)
	case errors.Is(err, context.DeadlineExceeded):
		return fmt.Errorf("%w: %w", records.ErrTimeout, err)
	}
	return err
}

// setTenantSQL scopes a transaction to one tenant for row-level security.
const setTenantSQL = `SELECT set_config('meridian.tenant', $1, true)`

// inTx runs f in a transaction on pool scoped to tenant.
func inTx(ctx context.Context, pool *pgxpool.Pool, tenant string, opts pgx.TxOptions, f func(pgx.Tx) error) error {
	tx, err := pool.BeginTx(ctx, opts)
	if err != nil {
		return err
	}
	defer func() { _ = tx.Rollback(context.WithoutCancel(ctx)) }()
	if _, err := tx.Exec(ctx, setTenantSQL, tenant); err != nil {
		return err
	}
	if err := f(tx); err != nil {
		return err
	}
	return tx.Commit(ctx)
}
