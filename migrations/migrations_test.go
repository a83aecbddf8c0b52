package migrations_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/meridian-dev/meridian/internal/localsrv"
	"github.com/meridian-dev/meridian/internal/testenv"
	"github.com/meridian-dev/meridian/migrations"
)

func testCtx(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// newDB creates database name on pg and returns its superuser DSN.
func newDB(t *testing.T, pg *localsrv.Postgres, name string) string {
	t.Helper()
	if err := pg.CreateDatabase(testCtx(t), name); err != nil {
		t.Fatalf("create database %s: %v", name, err)
	}
	return pg.DSN(name)
}

// migrated returns the DSN of a fresh database on pg brought to the latest version.
func migrated(t *testing.T, pg *localsrv.Postgres, name string) string {
	t.Helper()
	dsn := newDB(t, pg, name)
	if _, err := migrations.Apply(testCtx(t), map[string]string{name: dsn}); err != nil {
		t.Fatalf("Apply: %v", err)
	}
	return dsn
}

func connect(t *testing.T, dsn string) *pgx.Conn {
	t.Helper()
	conn, err := pgx.Connect(testCtx(t), dsn)
	if err != nil {
		t.Fatalf("connect: %v", err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	return conn
}

// connectAs connects to dsn's database as role (trust auth on loopback).
func connectAs(t *testing.T, dsn, role string) *pgx.Conn {
	t.Helper()
	cfg, err := pgx.ParseConfig(dsn)
	if err != nil {
		t.Fatalf("parse dsn: %v", err)
	}
	cfg.User = role
	cfg.Password = ""
	conn, err := pgx.ConnectConfig(testCtx(t), cfg)
	if err != nil {
		t.Fatalf("connect as %s: %v", role, err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	return conn
}

// schemaDump describes everything the migrations create, so two databases (or one database
// before and after a run) can be compared.
func schemaDump(t *testing.T, dsn string) string {
	t.Helper()
	ctx := testCtx(t)
	conn := connect(t, dsn)
	queries := []string{
		`SELECT table_name, column_name, data_type, is_nullable, coalesce(column_default, ''),
		        coalesce(collation_name, '')
		   FROM information_schema.columns WHERE table_schema = 'public'
		  ORDER BY table_name, ordinal_position`,
		`SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = 'public' ORDER BY indexname`,
		`SELECT tablename, policyname, permissive, cmd, roles::text, coalesce(qual, ''),
		        coalesce(with_check, '')
		   FROM pg_policies ORDER BY tablename, policyname`,
		`SELECT relname, relrowsecurity::text, relforcerowsecurity::text, relowner::regrole::text
		   FROM pg_class WHERE relnamespace = 'public'::regnamespace AND relkind IN ('r', 'S')
		  ORDER BY relname`,
		`SELECT conrelid::regclass::text, conname, pg_get_constraintdef(oid)
		   FROM pg_constraint WHERE connamespace = 'public'::regnamespace ORDER BY 1, 2`,
		`SELECT grantee, table_name, privilege_type FROM information_schema.role_table_grants
		  WHERE grantee LIKE 'meridian%' ORDER BY 1, 2, 3`,
		`SELECT grantee, table_name, column_name, privilege_type FROM information_schema.column_privileges
		  WHERE grantee LIKE 'meridian%' ORDER BY 1, 2, 3, 4`,
		`SELECT rolname, rolsuper, rolbypassrls, rolinherit, rolcanlogin, rolcreaterole, rolcreatedb
		   FROM pg_roles WHERE rolname LIKE 'meridian%' ORDER BY 1`,
		`SELECT version_id::text, is_applied::text FROM goose_db_version ORDER BY id`,
	}
	var b strings.Builder
	for _, q := range queries {
		rows, err := conn.Query(ctx, q)
		if err != nil {
			t.Fatalf("dump %q: %v", q, err)
		}
		for rows.Next() {
			vals, err := rows.Values()
			if err != nil {
				t.Fatalf("dump: %v", err)
			}
			fmt.Fprintln(&b, vals...)
		}
		if err := rows.Err(); err != nil {
			t.Fatalf("dump: %v", err)
		}
		b.WriteString("--\n")
	}
	return b.String()
}

// knownMigrations is every migration file, in order. Adding or removing one under sql/ fails
// TestLatestCoversAllMigrations until it is listed here, so the change is made on purpose.
var knownMigrations = []string{
	"00001_app_role.sql",
	"00002_tables.sql",
	"00003_rls_and_grants.sql",
	"00004_worker_role.sql",
	"00005_outbox_prune.sql",
	"00006_idempotency_seq.sql",
	"00007_schema_version.sql",
	"00008_next_change_seq.sql",
}

// TestLatestCoversAllMigrations checks the migration files on disk against knownMigrations,
// that their versions run 1..N without a gap or a repeat, and that Latest() is N.
func TestLatestCoversAllMigrations(t *testing.T) {
	entries, err := os.ReadDir("sql")
	if err != nil {
		t.Fatal(err)
	}
	var files []string
	for _, e := range entries {
		files = append(files, e.Name())
	}
	if !slices.Equal(files, knownMigrations) {
		t.Fatalf("migrations/sql holds %q, want %q (update knownMigrations when adding a migration)", files, knownMigrations)
	}
	for i, name := range files {
		v, _, ok := strings.Cut(name, "_")
		if n, err := strconv.Atoi(v); !ok || err != nil || n != i+1 {
			t.Errorf("file %d is %q: want version %05d (versions run 1..N without gaps)", i, name, i+1)
		}
	}
	if got, want := migrations.Latest(), int64(len(files)); got != want {
		t.Errorf("Latest() = %d, want %d (the highest file in migrations/sql)", got, want)
	}
}

func TestApplyEmptyDatabaseThenNoop(t *testing.T) {
	pg := testenv.Postgres(t)
	ctx := testCtx(t)
	dsn := newDB(t, pg, "shard1")

	if v, err := migrations.Status(ctx, dsn); err != nil || v != 0 {
		t.Fatalf("Status of empty database = %d, %v; want 0, nil", v, err)
	}
	res, err := migrations.Apply(ctx, map[string]string{"s1": dsn})
	if err != nil {
		t.Fatalf("first Apply: %v", err)
	}
	want := []migrations.Result{{Shard: "s1", From: 0, To: migrations.Latest()}}
	if !slices.Equal(res, want) {
		t.Fatalf("first Apply = %+v, want %+v", res, want)
	}
	if v, err := migrations.Status(ctx, dsn); err != nil || v != migrations.Latest() {
		t.Fatalf("Status = %d, %v; want %d", v, err, migrations.Latest())
	}
	before := schemaDump(t, dsn)
	for _, must := range []string{"records_pkey", "tenant_isolation", "outbox_unsent_idx", "records true true",
		"worker_purge_bound", "meridian_worker outbox sent_at UPDATE", "worker_prune_bound",
		"meridian_worker outbox DELETE"} {
		if !strings.Contains(before, must) {
			t.Fatalf("schema dump lacks %q:\n%s", must, before)
		}
	}

	res, err = migrations.Apply(ctx, map[string]string{"s1": dsn})
	if err != nil {
		t.Fatalf("second Apply: %v", err)
	}
	want = []migrations.Result{{Shard: "s1", From: migrations.Latest(), To: migrations.Latest()}}
	if !slices.Equal(res, want) {
		t.Fatalf("second Apply = %+v, want %+v", res, want)
	}
	if after := schemaDump(t, dsn); after != before {
		t.Fatalf("second Apply changed the schema:\nbefore:\n%s\nafter:\n%s", before, after)
	}
}

func TestApplyManyShardsOneCluster(t *testing.T) {
	pg := testenv.Postgres(t)
	dsns := map[string]string{}
	for i := range 4 {
		name := fmt.Sprintf("shard%d", i)
		dsns["us-east-"+name] = newDB(t, pg, name)
	}
	// Every runner races to create the cluster-global role.
	res, err := migrations.Apply(testCtx(t), dsns)
	if err != nil {
		t.Fatalf("Apply: %v", err)
	}
	if len(res) != len(dsns) {
		t.Fatalf("got %d results, want %d", len(res), len(dsns))
	}
	var first string
	for i, r := range res {
		if i > 0 && res[i-1].Shard >= r.Shard {
			t.Errorf("results not sorted by shard: %+v", res)
		}
		if r.Err != nil || r.From != 0 || r.To != migrations.Latest() {
			t.Errorf("result %+v, want From 0 To %d", r, migrations.Latest())
		}
		dump := schemaDump(t, dsns[r.Shard])
		if first == "" {
			first = dump
		} else if dump != first {
			t.Errorf("shard %s schema differs from the first shard's:\n%s\nvs\n%s", r.Shard, dump, first)
		}
	}
}

// TestApplyToleratesRoleCreatedConcurrently makes the role races deterministic: transactions in
// another database have created the roles but not committed, so our runner's CREATE ROLE blocks
// on pg_authid's unique index and fails once that transaction commits. The app role (00001) and
// the worker role (00004) are released one after the other, so the runner meets both races.
func TestApplyToleratesRoleCreatedConcurrently(t *testing.T) {
	pg := testenv.Postgres(t)
	ctx := testCtx(t)
	otherDSN := newDB(t, pg, "other")
	dsn := newDB(t, pg, "racer")

	roles := []string{migrations.AppRole, migrations.WorkerRole}
	txs := make([]pgx.Tx, len(roles))
	for i, role := range roles {
		tx, err := connect(t, otherDSN).Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		defer tx.Rollback(ctx)
		if _, err := tx.Exec(ctx, "CREATE ROLE "+role+" LOGIN"); err != nil {
			t.Fatal(err)
		}
		txs[i] = tx
	}

	type outcome struct {
		res []migrations.Result
		err error
	}
	done := make(chan outcome, 1)
	go func() {
		res, err := migrations.Apply(ctx, map[string]string{"racer": dsn})
		done <- outcome{res, err}
	}()

	watcher := connect(t, pg.DSN("postgres"))
	for i, role := range roles {
		testenv.WaitFor(t, 30*time.Second, func() error {
			var n int
			err := watcher.QueryRow(ctx, `SELECT count(*) FROM pg_stat_activity
				WHERE datname = 'racer' AND wait_event_type = 'Lock' AND query LIKE '%CREATE ROLE ' || $1 || '%'`,
				role).Scan(&n)
			if err != nil {
				return err
			}
			if n == 0 {
				select {
				case out := <-done:
					t.Fatalf("Apply finished before blocking on role %s: %+v, %v", role, out.res, out.err)
				default:
				}
				return fmt.Errorf("runner not yet blocked on role %s", role)
			}
			return nil
		})
		if err := txs[i].Commit(ctx); err != nil {
			t.Fatal(err)
		}
	}

	out := <-done
	if out.err != nil {
		t.Fatalf("Apply with concurrently created roles: %v", out.err)
	}
	if out.res[0].To != migrations.Latest() {
		t.Fatalf("result %+v, want To %d", out.res[0], migrations.Latest())
	}
}

// TestApplyRefusesPrivilegedExistingRole runs both cases on one cluster: the roles are
// cluster-global, so the app case resets its role before the worker case.
func TestApplyRefusesPrivilegedExistingRole(t *testing.T) {
	pg := testenv.Postgres(t)
	ctx := testCtx(t)
	tests := []struct {
		role, attr string
		stopsAt    int64 // version the shard is left at: the one before the role's migration
		reset      string
	}{
		{migrations.AppRole, "BYPASSRLS", 0, "ALTER ROLE meridian_app NOBYPASSRLS"},
		{migrations.WorkerRole, "SUPERUSER", 3, ""},
	}
	for i, tt := range tests {
		t.Run(tt.role, func(t *testing.T) {
			dsn := newDB(t, pg, fmt.Sprintf("shard%d", i))
			if err := pg.Exec(ctx, "CREATE ROLE "+tt.role+" LOGIN "+tt.attr); err != nil {
				t.Fatal(err)
			}
			res, err := migrations.Apply(ctx, map[string]string{"s1": dsn})
			if err == nil || !strings.Contains(err.Error(), "role "+tt.role) ||
				!strings.Contains(err.Error(), "BYPASSRLS") || !strings.Contains(err.Error(), `"s1"`) {
				t.Fatalf("Apply with a %s %s role: err = %v, want a refusal naming the shard, the role and BYPASSRLS",
					tt.attr, tt.role, err)
			}
			if res[0].Err == nil || res[0].To != tt.stopsAt {
				t.Fatalf("result %+v, want an error and version %d", res[0], tt.stopsAt)
			}
			if tt.reset != "" {
				if err := pg.Exec(ctx, tt.reset); err != nil {
					t.Fatal(err)
				}
			}
		})
	}
}

func TestConcurrentRunnersOnOneDatabaseSerialise(t *testing.T) {
	pg := testenv.Postgres(t)
	ctx := testCtx(t)
	dsn := newDB(t, pg, "shard1")

	const runners = 3
	var wg sync.WaitGroup
	results := make([][]migrations.Result, runners)
	errs := make([]error, runners)
	for i := range runners {
		wg.Add(1)
		go func() {
			defer wg.Done()
			results[i], errs[i] = migrations.Apply(ctx, map[string]string{"s1": dsn})
		}()
	}
	wg.Wait()
	fromZero := 0
	for i := range runners {
		if errs[i] != nil {
			t.Fatalf("runner %d: %v", i, errs[i])
		}
		r := results[i][0]
		if r.To != migrations.Latest() {
			t.Errorf("runner %d: %+v, want To %d", i, r, migrations.Latest())
		}
		if r.From == 0 {
			fromZero++
		} else if r.From != migrations.Latest() {
			t.Errorf("runner %d: From %d, want 0 or %d", i, r.From, migrations.Latest())
		}
	}
	if fromZero != 1 {
		t.Errorf("%d runners report migrating from 0, want exactly 1: %v", fromZero, results)
	}
	var applied int
	if err := connect(t, dsn).QueryRow(ctx,
		"SELECT count(*) FROM goose_db_version WHERE version_id > 0").Scan(&applied); err != nil {
		t.Fatal(err)
	}
	if applied != int(migrations.Latest()) {
		t.Fatalf("goose_db_version records %d applied migrations, want %d (each exactly once)", applied, migrations.Latest())
	}
}

func TestApplyRefusesStandby(t *testing.T) {
	pg := testenv.Postgres(t)
	ctx := testCtx(t)
	migrated(t, pg, "shard1")
	newDB(t, pg, "shard2") // created, never migrated
	standby := testenv.Standby(t, pg)

	res, err := migrations.Apply(ctx, map[string]string{
		"eu-west-1": standby.DSN("shard1"),
		"eu-west-2": standby.DSN("shard2"),
	})
	if !errors.Is(err, migrations.ErrStandby) {
		t.Fatalf("Apply on a standby: err = %v, want ErrStandby", err)
	}
	for _, r := range res {
		if !errors.Is(r.Err, migrations.ErrStandby) {
			t.Errorf("result %+v, want ErrStandby", r)
			continue
		}
		if msg := r.Err.Error(); !strings.Contains(msg, `"`+r.Shard+`"`) || !strings.Contains(msg, "primary") {
			t.Errorf("error %q should name shard %s and point at the primary", msg, r.Shard)
		}
	}
	// Status is read-only and works on a standby.
	if v, err := migrations.Status(ctx, standby.DSN("shard1")); err != nil || v != migrations.Latest() {
		t.Errorf("Status on standby = %d, %v; want %d", v, err, migrations.Latest())
	}
	if v, err := migrations.Status(ctx, standby.DSN("shard2")); err != nil || v != 0 {
		t.Errorf("Status of unmigrated database on standby = %d, %v; want 0", v, err)
	}
}

func TestApplyBadInput(t *testing.T) {
	ctx := testCtx(t)
	if _, err := migrations.Apply(ctx, nil); !errors.Is(err, migrations.ErrNoShards) {
		t.Errorf("Apply(nil) = %v, want ErrNoShards", err)
	}
	res, err := migrations.Apply(ctx, map[string]string{
		"broken":  "postgres://nobody@127.0.0.1:1/none?sslmode=disable&connect_timeout=2",
		"garbled": "::not a dsn::",
	})
	if err == nil {
		t.Fatal("Apply to unreachable databases succeeded")
	}
	for _, r := range res {
		if r.Err == nil || !strings.Contains(r.Err.Error(), `"`+r.Shard+`"`) {
			t.Errorf("result %+v: want an error naming the shard", r)
		}
	}
	if _, err := migrations.Status(ctx, "::not a dsn::"); err == nil {
		t.Error("Status of a garbled DSN succeeded")
	}
}

// pgCode returns err's SQLSTATE, or "" when err is not a Postgres error.
func pgCode(err error) string {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		return pgErr.Code
	}
	return ""
}

const insufficientPrivilege = "42501"

// asTenant runs f in a transaction of conn with the tenant setting set to tenant ("" = not set),
// and rolls back when f fails.
func asTenant(ctx context.Context, conn *pgx.Conn, tenant string, f func(pgx.Tx) error) error {
	tx, err := conn.Begin(ctx)
	if err != nil {
		return err
	}
	defer tx.Rollback(ctx)
	if tenant != "" {
		if _, err := tx.Exec(ctx, "SELECT set_config($1, $2, true)", migrations.TenantSetting, tenant); err != nil {
			return err
		}
	}
	if err := f(tx); err != nil {
		return err
	}
	return tx.Commit(ctx)
}

// seedTenant writes, as the service role, one row in every tenant table for tenant.
func seedTenant(ctx context.Context, conn *pgx.Conn, tenant string, records int) error {
	return asTenant(ctx, conn, tenant, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, "INSERT INTO tenants (tenant_id) VALUES ($1)", tenant); err != nil {
			return fmt.Errorf("tenants: %w", err)
		}
		for i := range records {
			if _, err := tx.Exec(ctx, `INSERT INTO records (tenant_id, collection, id, version, data)
				VALUES ($1, 'books', $2, 1, '{"n":1}')`, tenant, fmt.Sprintf("r%d", i)); err != nil {
				return fmt.Errorf("records: %w", err)
			}
		}
		if _, err := tx.Exec(ctx, `INSERT INTO idempotency_keys (tenant_id, key, request_hash, status, expires_at)
			VALUES ($1, 'k1', '\x01', 201, now() + interval '1 day')`, tenant); err != nil {
			return fmt.Errorf("idempotency_keys: %w", err)
		}
		if _, err := tx.Exec(ctx, `INSERT INTO outbox (tenant_id, seq, collection, record_id, op, version)
			VALUES ($1, 1, 'books', 'r0', 'create', 1)`, tenant); err != nil {
			return fmt.Errorf("outbox: %w", err)
		}
		return nil
	})
}

func TestRowLevelSecurity(t *testing.T) {
	pg := testenv.Postgres(t)
	ctx := testCtx(t)
	dsn := migrated(t, pg, "shard1")
	app := connectAs(t, dsn, migrations.AppRole)

	if err := seedTenant(ctx, app, "tenant-a", 3); err != nil {
		t.Fatalf("seed tenant-a: %v", err)
	}
	if err := seedTenant(ctx, app, "tenant-b", 5); err != nil {
		t.Fatalf("seed tenant-b: %v", err)
	}
	// The superuser (RLS does not apply) sees both tenants: the rows are really there.
	var total int
	if err := connect(t, dsn).QueryRow(ctx, "SELECT count(*) FROM records").Scan(&total); err != nil || total != 8 {
		t.Fatalf("superuser sees %d records (%v), want 8", total, err)
	}

	tables := []string{"tenants", "records", "idempotency_keys", "outbox"}

	t.Run("select star sees only own tenant", func(t *testing.T) {
		for _, table := range tables {
			err := asTenant(ctx, app, "tenant-a", func(tx pgx.Tx) error {
				rows, err := tx.Query(ctx, "SELECT * FROM "+table)
				if err != nil {
					return err
				}
				maps, err := pgx.CollectRows(rows, pgx.RowToMap)
				if err != nil {
					return err
				}
				if len(maps) == 0 {
					return fmt.Errorf("%s: tenant-a sees no rows", table)
				}
				for _, m := range maps {
					if m["tenant_id"] != "tenant-a" {
						return fmt.Errorf("%s: tenant-a sees row %v", table, m)
					}
				}
				if table == "records" && len(maps) != 3 {
					return fmt.Errorf("records: tenant-a sees %d rows, want 3", len(maps))
				}
				return nil
			})
			if err != nil {
				t.Error(err)
			}
		}
	})

	t.Run("writes for another tenant are rejected", func(t *testing.T) {
		writes := map[string]string{
			"insert tenants":  `INSERT INTO tenants (tenant_id) VALUES ('tenant-c')`,
			"insert records":  `INSERT INTO records (tenant_id, collection, id, version) VALUES ('tenant-b', 'books', 'x', 1)`,
			"insert idem":     `INSERT INTO idempotency_keys (tenant_id, key, request_hash, status, expires_at) VALUES ('tenant-b', 'k2', '\x01', 200, now())`,
			"insert outbox":   `INSERT INTO outbox (tenant_id, seq, collection, record_id, op, version) VALUES ('tenant-b', 2, 'books', 'x', 'create', 1)`,
			"move own record": `UPDATE records SET tenant_id = 'tenant-b' WHERE id = 'r0'`,
		}
		for name, q := range writes {
			err := asTenant(ctx, app, "tenant-a", func(tx pgx.Tx) error {
				_, err := tx.Exec(ctx, q)
				return err
			})
			if pgCode(err) != insufficientPrivilege {
				t.Errorf("%s as tenant-a: err = %v, want an RLS violation (42501)", name, err)
			}
		}
	})

	t.Run("another tenant's rows cannot be changed", func(t *testing.T) {
		for _, table := range tables {
			err := asTenant(ctx, app, "tenant-a", func(tx pgx.Tx) error {
				for _, q := range []string{
					"UPDATE " + table + " SET tenant_id = tenant_id WHERE tenant_id = 'tenant-b'",
					"DELETE FROM " + table + " WHERE tenant_id = 'tenant-b'",
				} {
					tag, err := tx.Exec(ctx, q)
					if err != nil {
						return err
					}
					if tag.RowsAffected() != 0 {
						return fmt.Errorf("%q affected %d rows of tenant-b", q, tag.RowsAffected())
					}
				}
				return nil
			})
			if err != nil {
				t.Errorf("%s: %v", table, err)
			}
		}
	})

	t.Run("no tenant set sees nothing", func(t *testing.T) {
		// The same connection has had the setting transaction-locally, so it is now '' rather
		// than undefined; a fresh connection covers the undefined case.
		for _, conn := range []*pgx.Conn{app, connectAs(t, dsn, migrations.AppRole)} {
			for _, table := range tables {
				var n int
				err := asTenant(ctx, conn, "", func(tx pgx.Tx) error {
					return tx.QueryRow(ctx, "SELECT count(*) FROM "+table).Scan(&n)
				})
				if err != nil || n != 0 {
					t.Errorf("%s without tenant: %d rows, %v; want 0", table, n, err)
				}
			}
			err := asTenant(ctx, conn, "", func(tx pgx.Tx) error {
				_, err := tx.Exec(ctx, `INSERT INTO tenants (tenant_id) VALUES ('tenant-c')`)
				return err
			})
			if pgCode(err) != insufficientPrivilege {
				t.Errorf("insert without tenant: err = %v, want 42501", err)
			}
		}
	})

	t.Run("row_security off is refused", func(t *testing.T) {
		err := asTenant(ctx, app, "tenant-a", func(tx pgx.Tx) error {
			if _, err := tx.Exec(ctx, "SET LOCAL row_security = off"); err != nil {
				return err
			}
			_, err := tx.Exec(ctx, "SELECT * FROM records")
			return err
		})
		if pgCode(err) != insufficientPrivilege {
			t.Errorf("SELECT with row_security off: err = %v, want 42501", err)
		}
	})
}

func TestAppRoleCannotChangeSchema(t *testing.T) {
	pg := testenv.Postgres(t)
	dsn := migrated(t, pg, "shard1")
	checkCannotChangeSchema(t, connectAs(t, dsn, migrations.AppRole), migrations.WorkerRole)
}

// checkCannotChangeSchema checks that conn's role is neither superuser nor BYPASSRLS, owns
// nothing, and gets permission denied (42501) for every schema or role change, for reading
// goose's table and for switching to other (another role it must not become).
func checkCannotChangeSchema(t *testing.T, conn *pgx.Conn, other string) {
	t.Helper()
	ctx := testCtx(t)
	var role string
	var super, bypass bool
	if err := conn.QueryRow(ctx, "SELECT rolname, rolsuper, rolbypassrls FROM pg_roles WHERE rolname = current_user").
		Scan(&role, &super, &bypass); err != nil {
		t.Fatal(err)
	}
	if super || bypass {
		t.Fatalf("%s: superuser=%v bypassrls=%v, want neither", role, super, bypass)
	}
	var owned int
	if err := conn.QueryRow(ctx, `SELECT count(*) FROM pg_class
		WHERE relnamespace = 'public'::regnamespace AND relowner = current_user::regrole`).Scan(&owned); err != nil || owned != 0 {
		t.Fatalf("%s owns %d relations (%v), want 0", role, owned, err)
	}

	tests := []struct{ name, sql string }{
		{"disable rls", "ALTER TABLE records DISABLE ROW LEVEL SECURITY"},
		{"no force rls", "ALTER TABLE outbox NO FORCE ROW LEVEL SECURITY"},
		{"drop policy", "DROP POLICY tenant_isolation ON tenants"},
		{"drop worker bound", "DROP POLICY worker_purge_bound ON records"},
		{"alter policy", "ALTER POLICY tenant_isolation ON idempotency_keys USING (true)"},
		{"widen worker policy", "ALTER POLICY worker_expiry ON idempotency_keys USING (true)"},
		{"create policy", "CREATE POLICY sneaky ON records USING (true)"},
		{"add column", "ALTER TABLE records ADD COLUMN x int"},
		{"drop table", "DROP TABLE records"},
		{"drop index", "DROP INDEX records_data_path_idx"},
		{"truncate", "TRUNCATE records"},
		{"truncate outbox", "TRUNCATE outbox"},
		{"create table", "CREATE TABLE public.sneaky (i int)"},
		{"read goose table", "SELECT * FROM goose_db_version"},
		{"grant bypass", "ALTER ROLE " + role + " BYPASSRLS"},
		{"grant itself", "GRANT SELECT ON goose_db_version TO " + role},
		{"become superuser", "SET ROLE postgres"},
		{"become " + other, "SET ROLE " + other},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := conn.Exec(ctx, tt.sql)
			if pgCode(err) != insufficientPrivilege {
				t.Errorf("%s as %s: err = %v, want permission denied (42501)", tt.sql, role, err)
			}
		})
	}
}

// TestWorkerRole checks what the cross-tenant jobs can do as meridian_worker, on two tenants
// seeded by the service role: read and mark sent every tenant's outbox rows, delete expired
// idempotency keys and old tombstones, and nothing else. Setting the tenant (which makes the
// tenant_isolation policy apply to the worker too) must not widen any of it.
func TestWorkerRole(t *testing.T) {
	pg := testenv.Postgres(t)
	ctx := testCtx(t)
	dsn := migrated(t, pg, "shard1")
	owner := connect(t, dsn)
	app := connectAs(t, dsn, migrations.AppRole)
	worker := connectAs(t, dsn, migrations.WorkerRole)

	tenants := []string{"tenant-a", "tenant-b"}
	for _, tenant := range tenants {
		// Live records r0..r2, an unexpired key k1, one unsent outbox row.
		if err := seedTenant(ctx, app, tenant, 3); err != nil {
			t.Fatalf("seed %s: %v", tenant, err)
		}
	}
	// As the owner (row-level security does not apply to the superuser): per tenant, r1 becomes
	// a tombstone an hour older than TombstoneMinAge, r2 one an hour younger, and an expired key
	// "old" is added.
	const tombstone = `UPDATE records SET deleted = true, data = '{}', version = version + 1,
		updated_at = now() - make_interval(secs => $2) WHERE id = $1`
	minAge := migrations.TombstoneMinAge.Seconds()
	for _, seed := range [][]any{
		{tombstone, "r1", minAge + 3600},
		{tombstone, "r2", minAge - 3600},
		{`INSERT INTO idempotency_keys (tenant_id, key, request_hash, status, body, expires_at)
		  SELECT tenant_id, 'old', '\x01', 201, 'secret', now() - interval '1 minute' FROM tenants`},
	} {
		if _, err := owner.Exec(ctx, seed[0].(string), seed[1:]...); err != nil {
			t.Fatalf("seed: %v\n%s", err, seed[0])
		}
	}
	// ownerCount counts rows as the owner, to see what the worker really changed.
	ownerCount := func(q string) int {
		t.Helper()
		var n int
		if err := owner.QueryRow(ctx, q).Scan(&n); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
		return n
	}
	// exec runs q as the worker in a transaction with tenant set ("" = none) and returns the
	// number of rows it affected.
	exec := func(tenant, q string, args ...any) (int64, error) {
		var n int64
		err := asTenant(ctx, worker, tenant, func(tx pgx.Tx) error {
			tag, err := tx.Exec(ctx, q, args...)
			n = tag.RowsAffected()
			return err
		})
		return n, err
	}
	// tenantsOf runs q (selecting tenant_id) as the worker and returns the tenant of each row.
	tenantsOf := func(q string) []string {
		t.Helper()
		var got []string
		err := asTenant(ctx, worker, "", func(tx pgx.Tx) error {
			rows, err := tx.Query(ctx, q)
			if err != nil {
				return err
			}
			got, err = pgx.CollectRows(rows, pgx.RowTo[string])
			return err
		})
		if err != nil {
			t.Fatalf("%s: %v", q, err)
		}
		slices.Sort(got)
		return got
	}

	t.Run("role is locked down", func(t *testing.T) {
		checkCannotChangeSchema(t, worker, migrations.AppRole)
	})

	t.Run("relay reads and marks every tenant's outbox", func(t *testing.T) {
		if got := tenantsOf(`SELECT tenant_id FROM outbox WHERE sent_at IS NULL ORDER BY id`); !slices.Equal(got, tenants) {
			t.Fatalf("unsent outbox rows of %v, want %v", got, tenants)
		}
		if got := tenantsOf(`SELECT tenant_id FROM tenants WHERE status = 'active'`); !slices.Equal(got, tenants) {
			t.Fatalf("tenants %v, want %v", got, tenants)
		}
		// Un-sending an unsent row fails the WITH CHECK of the worker's policies.
		if _, err := exec("", `UPDATE outbox SET sent_at = NULL`); pgCode(err) != insufficientPrivilege {
			t.Fatalf("setting sent_at NULL: err = %v, want 42501", err)
		}
		var ids []int64
		err := asTenant(ctx, worker, "", func(tx pgx.Tx) error {
			rows, err := tx.Query(ctx, `SELECT id FROM outbox WHERE sent_at IS NULL ORDER BY id LIMIT 100`)
			if err != nil {
				return err
			}
			ids, err = pgx.CollectRows(rows, pgx.RowTo[int64])
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
		const mark = `UPDATE outbox SET sent_at = now() WHERE id = ANY($1) AND sent_at IS NULL`
		if n, err := exec("", mark, ids); err != nil || n != 2 {
			t.Fatalf("marking %v sent: %d rows, %v; want 2", ids, n, err)
		}
		if n := ownerCount(`SELECT count(*) FROM outbox WHERE sent_at IS NOT NULL`); n != 2 {
			t.Fatalf("owner sees %d sent outbox rows, want 2", n)
		}
		// Sent rows stay sent, also when the tenant setting makes tenant_isolation apply.
		for _, tenant := range []string{"", "tenant-a"} {
			for _, q := range []string{`UPDATE outbox SET sent_at = NULL`, `UPDATE outbox SET sent_at = now()`} {
				if n, err := exec(tenant, q); err != nil || n != 0 {
					t.Errorf("%s (tenant %q): %d rows, %v; want 0 rows", q, tenant, n, err)
				}
			}
		}
	})

	t.Run("prune deletes only sent outbox rows", func(t *testing.T) {
		// Every seeded row was marked sent above; one more unsent row per tenant, written as
		// the owner a day ago, so that any age cutoff would reach it.
		if _, err := owner.Exec(ctx, `INSERT INTO outbox (tenant_id, seq, collection, record_id, op, version, created_at)
			SELECT tenant_id, 99, 'books', 'x', 'create', 1, now() - interval '1 day' FROM tenants`); err != nil {
			t.Fatal(err)
		}
		for _, tenant := range []string{"", "tenant-a"} {
			for _, q := range []string{
				`DELETE FROM outbox WHERE sent_at IS NULL`,
				`DELETE FROM outbox WHERE seq = 99`,
				`DELETE FROM outbox WHERE created_at < now() - interval '1 hour'`,
			} {
				if n, err := exec(tenant, q); err != nil || n != 0 {
					t.Errorf("%s (tenant %q): %d rows, %v; want 0 rows", q, tenant, n, err)
				}
			}
		}
		got := tenantsOf(`DELETE FROM outbox WHERE id = ANY(ARRAY(
			SELECT id FROM outbox WHERE sent_at < now() + interval '1 hour' LIMIT 10)) RETURNING tenant_id`)
		if !slices.Equal(got, tenants) {
			t.Fatalf("prune deleted outbox rows of %v, want the sent row of each of %v", got, tenants)
		}
		if n := ownerCount(`SELECT count(*) FROM outbox WHERE sent_at IS NULL AND seq = 99`); n != 2 {
			t.Fatalf("%d unsent outbox rows left, want 2", n)
		}
		if n := ownerCount(`SELECT count(*) FROM outbox WHERE sent_at IS NOT NULL`); n != 0 {
			t.Fatalf("%d sent outbox rows left, want 0", n)
		}
	})

	t.Run("expiry deletes only expired keys", func(t *testing.T) {
		if got := tenantsOf(`SELECT tenant_id FROM idempotency_keys`); !slices.Equal(got, tenants) {
			t.Fatalf("worker sees keys of %v, want only the expired one of each of %v", got, tenants)
		}
		for _, tenant := range []string{"", "tenant-a"} {
			if n, err := exec(tenant, `DELETE FROM idempotency_keys WHERE key = 'k1'`); err != nil || n != 0 {
				t.Errorf("deleting unexpired keys (tenant %q): %d rows, %v; want 0 rows", tenant, n, err)
			}
		}
		if got := tenantsOf(`DELETE FROM idempotency_keys WHERE expires_at < now() RETURNING tenant_id`); !slices.Equal(got, tenants) {
			t.Fatalf("expiry deleted keys of %v, want one of each of %v", got, tenants)
		}
		if n := ownerCount(`SELECT count(*) FROM idempotency_keys WHERE key = 'k1'`); n != 2 {
			t.Fatalf("%d unexpired keys left, want 2", n)
		}
		if n := ownerCount(`SELECT count(*) FROM idempotency_keys WHERE expires_at < now()`); n != 0 {
			t.Fatalf("%d expired keys left, want 0", n)
		}
	})

	t.Run("purge deletes only old tombstones", func(t *testing.T) {
		if got := tenantsOf(`SELECT tenant_id FROM records`); !slices.Equal(got, tenants) {
			t.Fatalf("worker sees records of %v, want only the old tombstone of each of %v", got, tenants)
		}
		for _, tenant := range []string{"", "tenant-a"} {
			for _, q := range []string{
				`DELETE FROM records WHERE NOT deleted`,
				`DELETE FROM records WHERE id = 'r2'`, // a tombstone younger than TombstoneMinAge
			} {
				if n, err := exec(tenant, q); err != nil || n != 0 {
					t.Errorf("%s (tenant %q): %d rows, %v; want 0 rows", q, tenant, n, err)
				}
			}
		}
		got := tenantsOf(`DELETE FROM records WHERE deleted AND updated_at < now() - interval '1 hour'
			RETURNING tenant_id`)
		if !slices.Equal(got, tenants) {
			t.Fatalf("purge deleted records of %v, want the old tombstone of each of %v", got, tenants)
		}
		if n := ownerCount(`SELECT count(*) FROM records WHERE id = 'r1'`); n != 0 {
			t.Fatalf("%d old tombstones left, want 0", n)
		}
		if n := ownerCount(`SELECT count(*) FROM records WHERE id IN ('r0', 'r2')`); n != 4 {
			t.Fatalf("%d live records and young tombstones left, want 4", n)
		}
	})

	t.Run("nothing else", func(t *testing.T) {
		denied := []string{
			`SELECT data FROM records`,
			`SELECT * FROM records WHERE NOT deleted`,
			`SELECT version FROM records`,
			`SELECT body FROM idempotency_keys`,
			`SELECT * FROM idempotency_keys`,
			`SELECT change_seq FROM tenants`,
			`INSERT INTO tenants (tenant_id) VALUES ('tenant-a')`,
			`INSERT INTO records (tenant_id, collection, id, version) VALUES ('tenant-a', 'books', 'x', 1)`,
			`INSERT INTO idempotency_keys (tenant_id, key, request_hash, status, expires_at)
			 VALUES ('tenant-a', 'k9', '\x01', 200, now())`,
			`INSERT INTO outbox (tenant_id, seq, collection, record_id, op, version)
			 VALUES ('tenant-a', 9, 'books', 'x', 'create', 1)`,
			`SELECT nextval('outbox_id_seq')`,
			`UPDATE outbox SET op = 'delete'`,
			`UPDATE outbox SET tenant_id = tenant_id`,
			`UPDATE outbox SET sent_at = now(), version = version + 1`,
			`UPDATE records SET deleted = true`,
			`UPDATE idempotency_keys SET expires_at = now()`,
			`UPDATE tenants SET status = 'moved'`,
			`DELETE FROM tenants`,
		}
		for _, tenant := range []string{"", "tenant-a"} {
			for _, q := range denied {
				if _, err := exec(tenant, q); pgCode(err) != insufficientPrivilege {
					t.Errorf("%s (tenant %q): err = %v, want permission denied (42501)", q, tenant, err)
				}
			}
		}
		err := asTenant(ctx, worker, "", func(tx pgx.Tx) error {
			if _, err := tx.Exec(ctx, "SET LOCAL row_security = off"); err != nil {
				return err
			}
			_, err := tx.Exec(ctx, "SELECT id FROM records")
			return err
		})
		if pgCode(err) != insufficientPrivilege {
			t.Errorf("SELECT with row_security off: err = %v, want 42501", err)
		}
		// The worker's policies are its own: the app role without a tenant still sees nothing.
		var n int
		if err := asTenant(ctx, app, "", func(tx pgx.Tx) error {
			return tx.QueryRow(ctx, `SELECT count(*) FROM outbox`).Scan(&n)
		}); err != nil || n != 0 {
			t.Errorf("app role without tenant sees %d outbox rows (%v), want 0", n, err)
		}
	})
}

// planNode is the part of EXPLAIN (FORMAT JSON) output the index test reads.
type planNode struct {
	NodeType  string     `json:"Node Type"`
	Relation  string     `json:"Relation Name"`
	IndexName string     `json:"Index Name"`
	Plans     []planNode `json:"Plans"`
}

func (n planNode) walk(f func(planNode)) {
	f(n)
	for _, c := range n.Plans {
		c.walk(f)
	}
}

func TestQueriesUseIndexes(t *testing.T) {
	pg := testenv.Postgres(t)
	ctx := testCtx(t)
	dsn := migrated(t, pg, "shard1")
	owner := connect(t, dsn)

	// Realistic proportions: many tenants, two collections each, few tombstones, few expired
	// idempotency keys, few unsent outbox rows. ANALYZE so the planner knows.
	seed := []string{
		`INSERT INTO tenants (tenant_id) SELECT 'tenant-' || g FROM generate_series(1, 2000) g`,
		`INSERT INTO records (tenant_id, collection, id, version, data, deleted, updated_at)
		 SELECT 'tenant-' || t, c, 'r' || lpad(i::text, 5, '0'), 1,
		        jsonb_build_object('n', i, 'color', CASE WHEN i = 7 THEN 'red' ELSE 'blue' END),
		        i % 97 = 0, now() - make_interval(mins => i)
		   FROM generate_series(1, 50) t, unnest(ARRAY['books', 'notes']) c, generate_series(1, 300) i`,
		`INSERT INTO idempotency_keys (tenant_id, key, request_hash, status, expires_at)
		 SELECT 'tenant-' || t, 'k' || i, '\x01', 201, now() + make_interval(mins => i - 5)
		   FROM generate_series(1, 50) t, generate_series(1, 300) i`,
		`INSERT INTO outbox (tenant_id, seq, collection, record_id, op, version, sent_at)
		 SELECT 'tenant-' || t, i, 'books', 'r' || i, 'create', 1,
		        CASE WHEN i > 295 THEN NULL ELSE now() - make_interval(mins => 300 - i) END
		   FROM generate_series(1, 50) t, generate_series(1, 300) i`,
		`ANALYZE`,
	}
	for _, q := range seed {
		if _, err := owner.Exec(ctx, q); err != nil {
			t.Fatalf("seed: %v\n%s", err, q)
		}
	}
	app := connectAs(t, dsn, migrations.AppRole)
	worker := connectAs(t, dsn, migrations.WorkerRole)

	index := []string{"Index Scan", "Index Only Scan"}
	anyIndex := []string{"Index Scan", "Index Only Scan", "Bitmap Index Scan"}
	tests := []struct {
		name string
		// as is who runs the query: "app" is meridian_app with tenant-7 set (RLS adds its
		// predicate), "worker" is meridian_worker (its policies add theirs), "" the owner.
		as       string
		query    string
		relation string
		nodes    []string // acceptable node types for the scan of relation
		indexes  []string // acceptable index names
	}{
		{"keyset forward", "app",
			`SELECT id, version, data FROM records WHERE tenant_id = 'tenant-7' AND collection = 'books'
			   AND NOT deleted AND id > 'r00100' ORDER BY id LIMIT 50`,
			"records", index, []string{"records_pkey"}},
		{"keyset backward", "app",
			`SELECT id, version, data FROM records WHERE tenant_id = 'tenant-7' AND collection = 'books'
			   AND NOT deleted AND id < 'r00200' ORDER BY id DESC LIMIT 50`,
			"records", index, []string{"records_pkey"}},
		{"first page, tenant from RLS only", "app",
			`SELECT * FROM records WHERE collection = 'notes' AND NOT deleted ORDER BY id LIMIT 50`,
			"records", index, []string{"records_pkey"}},
		{"single read", "app",
			`SELECT * FROM records WHERE tenant_id = 'tenant-7' AND collection = 'books' AND id = 'r00042'`,
			"records", index, []string{"records_pkey"}},
		{"batch read", "app",
			`SELECT * FROM records WHERE tenant_id = 'tenant-7' AND collection = 'books'
			   AND id = ANY('{r00001,r00002,r00003}')`,
			"records", anyIndex, []string{"records_pkey"}},
		{"where filter", "app",
			`SELECT * FROM records WHERE tenant_id = 'tenant-7' AND collection = 'books'
			   AND data @> '{"color":"red"}' AND NOT deleted ORDER BY id LIMIT 50`,
			"records", anyIndex, []string{"records_pkey", "records_data_path_idx"}},
		{"fence check and seq", "app",
			`UPDATE tenants SET change_seq = change_seq + 1 WHERE tenant_id = 'tenant-7'
			   RETURNING change_seq, write_fenced`,
			"tenants", index, []string{"tenants_pkey"}},
		{"idempotency lookup", "app",
			`SELECT * FROM idempotency_keys WHERE tenant_id = 'tenant-7' AND key = 'k12'`,
			"idempotency_keys", index, []string{"idempotency_keys_pkey"}},
		{"changes stream", "app",
			`SELECT * FROM outbox WHERE tenant_id = 'tenant-7' AND seq > 250 ORDER BY seq LIMIT 100`,
			"outbox", anyIndex, []string{"outbox_tenant_seq_key"}},
		{"relay unsent", "",
			`SELECT * FROM outbox WHERE sent_at IS NULL ORDER BY id LIMIT 100`,
			"outbox", anyIndex, []string{"outbox_unsent_idx"}},
		{"outbox retention", "",
			`DELETE FROM outbox WHERE sent_at < now() - interval '290 minutes'`,
			"outbox", anyIndex, []string{"outbox_sent_at_idx"}},
		{"idempotency expiry", "",
			`DELETE FROM idempotency_keys WHERE expires_at < now()`,
			"idempotency_keys", anyIndex, []string{"idempotency_keys_expires_idx"}},
		{"tombstone purge", "",
			`DELETE FROM records WHERE deleted AND updated_at < now() - interval '250 minutes'`,
			"records", anyIndex, []string{"records_tombstone_idx"}},
		{"relay unsent as worker", "worker",
			`SELECT id, tenant_id, seq, collection, record_id, op, version, lsn FROM outbox
			  WHERE sent_at IS NULL ORDER BY id LIMIT 100`,
			"outbox", anyIndex, []string{"outbox_unsent_idx"}},
		{"relay mark sent as worker", "worker",
			`UPDATE outbox SET sent_at = now() WHERE id = ANY('{1,2,3}') AND sent_at IS NULL`,
			"outbox", anyIndex, []string{"outbox_pkey", "outbox_unsent_idx"}},
		{"outbox prune as worker", "worker",
			`DELETE FROM outbox WHERE id = ANY(ARRAY(
			   SELECT id FROM outbox WHERE sent_at < now() - interval '290 minutes' LIMIT 1000))`,
			"outbox", anyIndex, []string{"outbox_sent_at_idx"}},
		{"idempotency expiry as worker", "worker",
			`DELETE FROM idempotency_keys WHERE expires_at < now()`,
			"idempotency_keys", anyIndex, []string{"idempotency_keys_expires_idx"}},
		{"tombstone purge as worker", "worker",
			`DELETE FROM records WHERE deleted AND updated_at < now() - interval '30 days'`,
			"records", anyIndex, []string{"records_tombstone_idx"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var raw []byte
			explain := func(q pgx.Tx) error {
				return q.QueryRow(ctx, "EXPLAIN (FORMAT JSON) "+tt.query).Scan(&raw)
			}
			var err error
			switch tt.as {
			case "app":
				err = asTenant(ctx, app, "tenant-7", explain)
			case "worker":
				err = asTenant(ctx, worker, "", explain)
			default:
				err = asTenant(ctx, owner, "", explain)
			}
			if err != nil {
				t.Fatalf("explain: %v", err)
			}
			var plans []struct {
				Plan planNode `json:"Plan"`
			}
			if err := json.Unmarshal(raw, &plans); err != nil || len(plans) != 1 {
				t.Fatalf("decode plan: %v\n%s", err, raw)
			}
			var used bool
			plans[0].Plan.walk(func(n planNode) {
				if n.NodeType == "Seq Scan" && n.Relation == tt.relation {
					t.Errorf("sequential scan of %s", tt.relation)
				}
				if slices.Contains(tt.nodes, n.NodeType) && slices.Contains(tt.indexes, n.IndexName) {
					used = true
				}
			})
			if !used || t.Failed() {
				t.Errorf("want a %v on %v; plan:\n%s", tt.nodes, tt.indexes, raw)
			}
		})
	}
}

// TestSchemaVersionFunction: meridian_app reads the schema version through
// meridian_schema_version() (a move compares two shards' versions) although it cannot read
// goose's table; the worker role and roles without a grant cannot call it.
func TestSchemaVersionFunction(t *testing.T) {
	pg := testenv.Postgres(t)
	ctx := testCtx(t)
	dsn := migrated(t, pg, "shard1")
	app := connectAs(t, dsn, migrations.AppRole)
	var v int64
	if err := app.QueryRow(ctx, `SELECT meridian_schema_version()`).Scan(&v); err != nil || v != migrations.Latest() {
		t.Fatalf("meridian_schema_version() as %s = %d, %v; want %d", migrations.AppRole, v, err, migrations.Latest())
	}
	if _, err := app.Exec(ctx, `SELECT count(*) FROM goose_db_version`); err == nil {
		t.Fatalf("%s reads goose_db_version directly", migrations.AppRole)
	}
	worker := connectAs(t, dsn, migrations.WorkerRole)
	if err := worker.QueryRow(ctx, `SELECT meridian_schema_version()`).Scan(&v); err == nil {
		t.Fatalf("%s may call meridian_schema_version()", migrations.WorkerRole)
	}
}
