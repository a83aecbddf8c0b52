// Package migrations owns the schema of every shard database: versioned SQL files embedded in
// the binary, and the runner that applies them to all shards at once.
//
// The runner is built on goose v3's Provider (see docs/migrations.md for why goose). Apply opens
// each shard with database/sql over pgx, refuses a hot standby (pg_is_in_recovery) with
// ErrStandby, and runs the pending migrations under goose's Postgres session advisory lock, so
// two runners against one database serialise and the second finds nothing to do. Shards are
// migrated concurrently, at most MaxParallel at a time, and each reports its version before and
// after in a Result. Migrations are forward-only.
//
// The schema (tenants, records with tombstones, idempotency_keys, outbox) puts row-level
// security on every tenant table, keyed by the transaction-local setting TenantSetting, and
// creates the LOGIN role AppRole that the services connect as: not superuser, no BYPASSRLS, owner
// of nothing, DML grants only. The cross-tenant background jobs (outbox relay, idempotency-key
// expiry, tombstone purge) connect as WorkerRole instead: it sees every tenant, but may only read
// outbox rows and mark them sent, delete expired idempotency keys, delete tombstones older than
// TombstoneMinAge, and read tenant ids and statuses. It inserts nothing and reads no record data.
//
// This package must never be imported by request paths for anything but its constants; it never
// runs DDL outside Apply. Tests use real Postgres from internal/testenv.
package migrations

import (
	"context"
	"database/sql"
	"embed"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"slices"
	"sort"
	"sync"
	"time"

	// Registers the "pgx" database/sql driver.
	_ "github.com/jackc/pgx/v5/stdlib"
	"github.com/pressly/goose/v3"
	"github.com/pressly/goose/v3/lock"
)

// AppRole is the LOGIN role the services connect as. It is not a superuser, cannot bypass
// row-level security and owns no table.
const AppRole = "meridian_app"

// WorkerRole is the LOGIN role of the cross-tenant background jobs (outbox relay, idempotency-key
// expiry, tombstone purge). Like AppRole it is not a superuser, cannot bypass row-level security
// and owns no table; its policies let it see across tenants, and its grants are narrow: SELECT and
// UPDATE(sent_at) of unsent rows on outbox, DELETE of expired idempotency_keys rows, DELETE of
// tombstones older than TombstoneMinAge, SELECT(tenant_id, status) on tenants. See
// docs/migrations.md.
const WorkerRole = "meridian_worker"

// TombstoneMinAge is the youngest tombstone (records.deleted, aged by updated_at) that
// WorkerRole may purge; younger ones are invisible to it. It is a floor fixed by the schema,
// not the purge job's retention, which should be longer.
const TombstoneMinAge = 24 * time.Hour

// TenantSetting is the per-transaction setting the row-level security policies compare
// tenant_id with. Set it first in every transaction:
//
//	SELECT set_config('meridian.tenant', $1, true)
const TenantSetting = "meridian.tenant"

// MaxParallel is how many shard databases Apply migrates at the same time.
const MaxParallel = 8

// Errors returned by this package, possibly wrapped; compare with errors.Is.
var (
	// ErrStandby means the database is a hot standby; migrations only run against primaries.
	ErrStandby = errors.New("migrations: database is a standby (read-only)")
	// ErrNoShards means Apply was called with no shard.
	ErrNoShards = errors.New("migrations: no shard databases given")
)

// sqlFiles holds the versioned migrations, named NNNNN_description.sql.
//
//go:embed sql/*.sql
var sqlFiles embed.FS

// lockTimeoutSeconds bounds how long a runner waits, polling once a second, for another runner
// holding the same database's advisory lock.
const lockTimeoutSeconds = 300

// Result is one shard's outcome. From and To are goose versions (0 = empty database). When Err
// is not nil, To is the version the shard was left at if it could be read, else From.
type Result struct {
	Shard string
	From  int64
	To    int64
	Err   error
}

// Latest returns the highest migration version embedded in this binary.
func Latest() int64 {
	src := sources()
	var v int64
	for _, s := range src {
		v = max(v, s)
	}
	return v
}

// sources returns the embedded migration versions.
func sources() []int64 {
	fsys := migrationFS()
	entries, err := fs.ReadDir(fsys, ".")
	if err != nil {
		// The directory is embedded at build time; failing to read it is a build defect.
		panic(fmt.Sprintf("migrations: reading embedded sql: %v", err))
	}
	var out []int64
	for _, e := range entries {
		v, err := goose.NumericComponent(e.Name())
		if err != nil {
			panic(fmt.Sprintf("migrations: embedded file %q has no version: %v", e.Name(), err))
		}
		out = append(out, v)
	}
	slices.Sort(out)
	return out
}

func migrationFS() fs.FS {
	sub, err := fs.Sub(sqlFiles, "sql")
	if err != nil {
		panic(fmt.Sprintf("migrations: embedded sql: %v", err))
	}
	return sub
}

// Apply migrates every shard database in dsns (shard id → DSN of a role that may own the
// tables) to Latest, concurrently. It returns one Result per shard, sorted by shard id, and an
// error joining every shard's error (each naming its shard), or nil when all succeeded. Running
// it again changes nothing and reports From == To.
func Apply(ctx context.Context, dsns map[string]string) ([]Result, error) {
	if len(dsns) == 0 {
		return nil, ErrNoShards
	}
	ids := make([]string, 0, len(dsns))
	for id := range dsns {
		ids = append(ids, id)
	}
	sort.Strings(ids)

	results := make([]Result, len(ids))
	sem := make(chan struct{}, MaxParallel)
	var wg sync.WaitGroup
	for i, id := range ids {
		wg.Add(1)
		go func() {
			defer wg.Done()
			select {
			case sem <- struct{}{}:
				defer func() { <-sem }()
			case <-ctx.Done():
				results[i] = Result{Shard: id, Err: fmt.Errorf("migrations: shard %q: %w", id, ctx.Err())}
				return
			}
			results[i] = applyShard(ctx, id, dsns[id])
		}()
	}
	wg.Wait()

	var errs []error
	for _, r := range results {
		if r.Err != nil {
			errs = append(errs, r.Err)
		}
	}
	return results, errors.Join(errs...)
}

// applyShard migrates one database. Every error it returns names the shard.
func applyShard(ctx context.Context, shard, dsn string) Result {
	res := Result{Shard: shard}
	fail := func(err error) Result {
		res.Err = fmt.Errorf("migrations: shard %q: %w", shard, err)
		return res
	}
	if shard == "" {
		return fail(errors.New("empty shard id"))
	}
	log := slog.Default().With("component", "migrations", "shard", shard)

	db, err := open(ctx, dsn)
	if err != nil {
		return fail(err)
	}
	defer db.Close()

	// Checked before goose touches the database: goose would otherwise start by trying to
	// create its version table and fail with a less helpful read-only error.
	var standby bool
	if err := db.QueryRowContext(ctx, "SELECT pg_is_in_recovery()").Scan(&standby); err != nil {
		return fail(fmt.Errorf("checking recovery state: %w", err))
	}
	if standby {
		return fail(fmt.Errorf("%w; run migrations against the shard's primary", ErrStandby))
	}

	locker, err := lock.NewPostgresSessionLocker(lock.WithLockTimeout(1, lockTimeoutSeconds))
	if err != nil {
		return fail(err)
	}
	p, err := goose.NewProvider(goose.DialectPostgres, db, migrationFS(),
		goose.WithSessionLocker(locker),
		goose.WithDisableGlobalRegistry(true),
		goose.WithSlog(log),
	)
	if err != nil {
		return fail(fmt.Errorf("goose provider: %w", err))
	}

	// A first look, used as From when there turns out to be nothing to apply.
	before, err := p.GetDBVersion(ctx)
	if err != nil {
		return fail(fmt.Errorf("reading version: %w", err))
	}
	res.From, res.To = before, before

	applied, upErr := p.Up(ctx)
	first := int64(-1) // version of the first migration this run attempted
	var partial *goose.PartialError
	switch {
	case len(applied) > 0:
		first = applied[0].Source.Version
	case errors.As(upErr, &partial):
		if len(partial.Applied) > 0 {
			first = partial.Applied[0].Source.Version
		} else if partial.Failed != nil && partial.Failed.Source != nil {
			first = partial.Failed.Source.Version
		}
	}
	after, err := p.GetDBVersion(ctx)
	if err == nil {
		res.To = after
	}
	switch {
	case first >= 0:
		// Up chose what to apply while holding the advisory lock, so the version below the
		// first migration it ran is the version this run really started from (another runner
		// may have moved the database on since the first look).
		res.From = previous(first)
	case err == nil:
		// Nothing attempted: the database was already at its version under the lock.
		res.From = after
	}
	if upErr != nil {
		return fail(fmt.Errorf("applying migrations: %w", upErr))
	}
	if err != nil {
		return fail(fmt.Errorf("reading version after migrating: %w", err))
	}
	if res.To > Latest() {
		log.Warn("database schema is newer than this binary", "db_version", res.To, "latest", Latest())
	}
	if len(applied) > 0 {
		log.Info("migrated", "from", res.From, "to", res.To, "applied", len(applied))
	}
	return res
}

// previous returns the embedded version just below v, or 0.
func previous(v int64) int64 {
	var prev int64
	for _, s := range sources() {
		if s < v {
			prev = s
		}
	}
	return prev
}

// Status returns the schema version of one database, 0 when it was never migrated. It takes no
// lock and writes nothing, so it also works on a standby.
func Status(ctx context.Context, dsn string) (int64, error) {
	db, err := open(ctx, dsn)
	if err != nil {
		return 0, err
	}
	defer db.Close()

	// goose would create its version table if it were missing; on a standby that fails, and on
	// a primary it would be a write from a read-only call.
	var exists bool
	if err := db.QueryRowContext(ctx,
		"SELECT to_regclass('goose_db_version') IS NOT NULL").Scan(&exists); err != nil {
		return 0, fmt.Errorf("migrations: status: %w", err)
	}
	if !exists {
		return 0, nil
	}
	p, err := goose.NewProvider(goose.DialectPostgres, db, migrationFS(),
		goose.WithDisableGlobalRegistry(true),
		goose.WithSlog(slog.Default().With("component", "migrations")),
	)
	if err != nil {
		return 0, fmt.Errorf("migrations: status: goose provider: %w", err)
	}
	v, err := p.GetDBVersion(ctx)
	if err != nil {
		return 0, fmt.Errorf("migrations: status: %w", err)
	}
	return v, nil
}

// open connects to dsn through pgx's database/sql driver and checks the connection.
func open(ctx context.Context, dsn string) (*sql.DB, error) {
	db, err := sql.Open("pgx", dsn)
	if err != nil {
		return nil, fmt.Errorf("opening database: %w", err)
	}
	// goose holds one connection at a time; the second is for our own checks.
	db.SetMaxOpenConns(2)
	if err := db.PingContext(ctx); err != nil {
		db.Close()
		return nil, fmt.Errorf("connecting: %w", err)
	}
	return db, nil
}
