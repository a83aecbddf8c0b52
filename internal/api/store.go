package api

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"strconv"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/meridian-dev/meridian/replication"
)

// Store errors; handlers map them to problem+json statuses.
var (
	ErrTenantNotFound = errors.New("api: tenant not found")
	ErrTenantFenced   = errors.New("api: tenant is fenced for writes")
	ErrUnknownShard   = errors.New("api: shard not in map")
	ErrNoEndpoint     = errors.New("api: shard has no endpoint for its home region")
)

// PoolConfig sizes each shard's pgxpool. Zero values take the documented defaults.
type PoolConfig struct {
	User, Password   string        // role to connect as; "" user = migrations.AppRole
	MaxConns         int32         // 0 = 10
	MinConns         int32         // 0 = 0
	MaxConnLifetime  time.Duration // 0 = 30m
	MaxConnIdleTime  time.Duration // 0 = 5m
	StatementTimeout time.Duration // 0 = 1s
	IdleInTxTimeout  time.Duration // 0 = 10s
	// Tracer traces every query of every pool, and every batch when it also implements
	// pgx.BatchTracer (tests count a read's round trips with it). nil = no tracing.
	Tracer pgx.QueryTracer
	// DialVia maps a shard endpoint (host:port, as the shard map names it) to the address to
	// dial instead — the local launcher's latency proxy to another region. nil = dial the
	// endpoints themselves.
	DialVia map[string]string
}

func (pc PoolConfig) withDefaults() PoolConfig {
	if pc.User == "" {
		pc.User = "meridian_app"
	}
	if pc.MaxConns == 0 {
		pc.MaxConns = 10
	}
	if pc.MaxConnLifetime == 0 {
		pc.MaxConnLifetime = 30 * time.Minute
	}
	if pc.MaxConnIdleTime == 0 {
		pc.MaxConnIdleTime = 5 * time.Minute
	}
	if pc.StatementTimeout == 0 {
		pc.StatementTimeout = time.Second
	}
	if pc.IdleInTxTimeout == 0 {
		pc.IdleInTxTimeout = 10 * time.Second
	}
	return pc
}

// Pools holds one primary pgxpool per shard, created on first use from the shard map's endpoint
// of the shard's home region, and one pool per shard for the node's own region's copy when that
// copy is a standby (Local). A pool is replaced when its endpoint or database changes.
type Pools struct {
	cfg PoolConfig
	mu  sync.Mutex
	// primaries and standbys (shard -> pool) are guarded by mu.
	primaries, standbys map[string]*poolEntry
}

type poolEntry struct {
	addr, db string
	pool     *pgxpool.Pool
}

// NewPools returns an empty pool set.
func NewPools(cfg PoolConfig) *Pools {
	return &Pools{cfg: cfg.withDefaults(), primaries: map[string]*poolEntry{}, standbys: map[string]*poolEntry{}}
}

// Primary returns the pool of the shard's primary.
func (p *Pools) Primary(ctx context.Context, sh ShardInfo) (*pgxpool.Pool, error) {
	addr := sh.Endpoints[sh.HomeRegion]
	if addr == "" {
		return nil, fmt.Errorf("%w: %s", ErrNoEndpoint, sh.ID)
	}
	return p.get(ctx, p.primaries, sh.ID, addr, sh.Database)
}

// Local returns the pool of the shard's copy in region and whether that copy is the primary.
// It is the primary when the shard is homed in region, when region has no endpoint of its own,
// or when region's endpoint is the primary's address.
func (p *Pools) Local(ctx context.Context, sh ShardInfo, region string) (*pgxpool.Pool, bool, error) {
	addr := sh.Endpoints[region]
	if region == sh.HomeRegion || addr == "" || addr == sh.Endpoints[sh.HomeRegion] {
		pool, err := p.Primary(ctx, sh)
		return pool, true, err
	}
	pool, err := p.get(ctx, p.standbys, sh.ID, addr, sh.Database)
	return pool, false, err
}

func (p *Pools) get(ctx context.Context, m map[string]*poolEntry, id, addr, db string) (*pgxpool.Pool, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if e, ok := m[id]; ok && e.addr == addr && e.db == db {
		return e.pool, nil
	} else if ok {
		go e.pool.Close() // endpoint moved; let in-flight users finish
	}
	pool, err := p.open(ctx, addr, db)
	if err != nil {
		return nil, err
	}
	m[id] = &poolEntry{addr: addr, db: db, pool: pool}
	return pool, nil
}

func (p *Pools) open(ctx context.Context, addr, db string) (*pgxpool.Pool, error) {
	if via, ok := p.cfg.DialVia[addr]; ok {
		addr = via
	}
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, fmt.Errorf("api: shard endpoint %q: %w", addr, err)
	}
	u := url.URL{Scheme: "postgres", User: url.UserPassword(p.cfg.User, p.cfg.Password), Host: net.JoinHostPort(host, port), Path: "/" + db, RawQuery: "sslmode=disable"}
	if p.cfg.Password == "" {
		u.User = url.User(p.cfg.User)
	}
	pc, err := pgxpool.ParseConfig(u.String())
	if err != nil {
		return nil, err
	}
	pc.MaxConns, pc.MinConns = p.cfg.MaxConns, p.cfg.MinConns
	pc.MaxConnLifetime, pc.MaxConnIdleTime = p.cfg.MaxConnLifetime, p.cfg.MaxConnIdleTime
	pc.ConnConfig.RuntimeParams["statement_timeout"] = strconv.FormatInt(p.cfg.StatementTimeout.Milliseconds(), 10)
	pc.ConnConfig.RuntimeParams["idle_in_transaction_session_timeout"] = strconv.FormatInt(p.cfg.IdleInTxTimeout.Milliseconds(), 10)
	pc.ConnConfig.RuntimeParams["application_name"] = "meridian-api"
	pc.ConnConfig.Tracer = p.cfg.Tracer
	// A dead copy must fail fast so a read can fall back to the primary within its deadline.
	pc.ConnConfig.ConnectTimeout = 2 * time.Second
	return pgxpool.NewWithConfig(ctx, pc)
}

// Each calls f for every open primary pool (metrics, readiness).
func (p *Pools) Each(f func(shard string, pool *pgxpool.Pool)) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for id, e := range p.primaries {
		f(id, e.pool)
	}
}

// EachStandby calls f for every open standby pool (metrics).
func (p *Pools) EachStandby(f func(shard string, pool *pgxpool.Pool)) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for id, e := range p.standbys {
		f(id, e.pool)
	}
}

// Close closes every pool.
func (p *Pools) Close() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, m := range []map[string]*poolEntry{p.primaries, p.standbys} {
		for id, e := range m {
			e.pool.Close()
			delete(m, id)
		}
	}
}

// setTenant scopes a transaction to one tenant for row-level security.
const setTenantSQL = `SELECT set_config('meridian.tenant', $1, true)`

// readScopeSQL opens every read batch: it makes the batch's transaction read-only and scopes it
// to one tenant. Both settings are local to the transaction, so they end at its Sync and never
// reach the connection's next user. Raising transaction_read_only is allowed at any point of a
// transaction (only lowering it is not), and it is in force for every later statement.
const readScopeSQL = `SELECT set_config('transaction_read_only', 'on', true), set_config('meridian.tenant', $1, true)`

// replayedSQL is a Consistency-Token's check on a standby: has it replayed WAL up to $1? NULL
// on a primary (pg_last_wal_replay_lsn is NULL outside recovery).
const replayedSQL = `SELECT pg_last_wal_replay_lsn() >= $1::pg_lsn`

// tenantExistsSQL tells a tenant without a row here (404 tenant) from one without the record.
// It must run after readScopeSQL: the tenants table is under row-level security too.
const tenantExistsSQL = `SELECT EXISTS (SELECT 1 FROM tenants WHERE tenant_id = $1)`

// readBatch runs a read for tenant on conn in one round trip: readScopeSQL, the tenant check,
// then the statements queue adds (with their result callbacks, see pgx.QueuedQuery), all sent
// as one pipeline with a single Sync. Postgres runs the statements between two Syncs in one
// implicit transaction, so the local settings of readScopeSQL hold for every statement queue
// adds, and an error anywhere rolls the whole batch back. It returns ErrTenantNotFound when the
// tenant has no row, else the first error of a statement or callback; the callbacks of
// statements after a failed one are not called.
//
// minLSN > 0 makes the batch check first that the server (a standby) has replayed WAL up to
// minLSN, returning errStandbyBehind if not (and replication.ErrNotStandby on a primary). The
// check is a statement of its own, before the read's, so in READ COMMITTED the read's snapshot
// is taken after it and includes everything up to minLSN.
func readBatch(ctx context.Context, conn *pgx.Conn, tenant string, minLSN replication.LSN, queue func(*pgx.Batch)) error {
	b := &pgx.Batch{}
	b.Queue(readScopeSQL, tenant)
	if minLSN > 0 {
		b.Queue(replayedSQL, minLSN.String()).QueryRow(func(row pgx.Row) error {
			var ok *bool
			if err := row.Scan(&ok); err != nil {
				return err
			}
			switch {
			case ok == nil:
				return replication.ErrNotStandby
			case !*ok:
				return errStandbyBehind
			}
			return nil
		})
	}
	b.Queue(tenantExistsSQL, tenant).QueryRow(func(row pgx.Row) error {
		var exists bool
		if err := row.Scan(&exists); err != nil {
			return err
		}
		if !exists {
			return ErrTenantNotFound
		}
		return nil
	})
	queue(b)
	return conn.SendBatch(ctx, b).Close()
}

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

// noteKeyTenant remembers that tenant stored an Idempotency-Key on shard.
func (s *Server) noteKeyTenant(shard, tenant string) {
	s.keyMu.Lock()
	defer s.keyMu.Unlock()
	if s.keyTenants == nil {
		s.keyTenants = map[string]map[string]struct{}{}
	}
	if s.keyTenants[shard] == nil {
		s.keyTenants[shard] = map[string]struct{}{}
	}
	s.keyTenants[shard][tenant] = struct{}{}
}

func (s *Server) knownTenants(shard string) []string {
	s.keyMu.Lock()
	defer s.keyMu.Unlock()
	out := make([]string, 0, len(s.keyTenants[shard]))
	for t := range s.keyTenants[shard] {
		out = append(out, t)
	}
	return out
}

// RunCleanup deletes expired Idempotency-Key rows on every shard homed in this region every
// interval until ctx ends.
func (s *Server) RunCleanup(ctx context.Context, interval time.Duration) {
	tk := time.NewTicker(interval)
	defer tk.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tk.C:
		}
		for _, sh := range s.maps.Shards() {
			if sh.HomeRegion != s.cfg.Region {
				continue
			}
			if n, err := s.CleanupIdempotencyKeys(ctx, sh); err != nil {
				s.log.Warn("idempotency cleanup", "shard", sh.ID, "err", err)
			} else if n > 0 {
				s.log.Info("idempotency cleanup", "shard", sh.ID, "deleted", n)
			}
		}
	}
}

// CleanupIdempotencyKeys deletes expired Idempotency-Key rows on shard and returns how many it
// removed: of every tenant through Config.Workers when set, else per known tenant, because
// row-level security scopes every statement of meridian_app to one tenant.
func (s *Server) CleanupIdempotencyKeys(ctx context.Context, sh ShardInfo) (int64, error) {
	if s.cfg.Workers != nil {
		// The worker role's policy lets it delete expired keys of every tenant, by the
		// database's clock, in one statement.
		pool, err := s.cfg.Workers.Primary(ctx, sh)
		if err != nil {
			return 0, err
		}
		tag, err := pool.Exec(ctx, `DELETE FROM idempotency_keys WHERE expires_at < now()`)
		if err != nil {
			return 0, fmt.Errorf("api: idempotency cleanup on %s: %w", sh.ID, err)
		}
		return tag.RowsAffected(), nil
	}
	pool, err := s.pools.Primary(ctx, sh)
	if err != nil {
		return 0, err
	}
	// meridian_app cannot list tenants (row-level security), so the job covers the tenants
	// this node has stored keys for since it started; keys of others are still never replayed
	// once expired (claimKey re-claims them), they only wait for a cross-tenant purge.
	var total int64
	for _, tenant := range s.knownTenants(sh.ID) {
		err := inTx(ctx, pool, tenant, pgx.TxOptions{}, func(tx pgx.Tx) error {
			tag, err := tx.Exec(ctx, `DELETE FROM idempotency_keys WHERE tenant_id = $1 AND expires_at < $2`, tenant, s.cfg.Now())
			total += tag.RowsAffected()
			return err
		})
		if err != nil {
			return total, err
		}
	}
	return total, nil
}
