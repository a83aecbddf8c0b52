-- 00004: meridian_worker, the role of the cross-tenant background jobs.
--
-- The outbox relay, the idempotency-key expiry and the tombstone purge work across tenants, and
-- meridian_app sees one tenant at a time. meridian_worker sees across tenants, but only what
-- those three jobs need:
--
--   outbox            SELECT every row of every tenant; UPDATE of sent_at only, only on unsent
--                     rows, and only to a non-NULL time (mark sent; never un-send).
--   idempotency_keys  DELETE of expired rows only (expires_at < now()); SELECT of tenant_id, key
--                     and expires_at of expired rows only, so a job can count or log what it
--                     deletes. Response bodies and headers stay unreadable.
--   records           DELETE of tombstones at least one day old only (deleted AND updated_at <
--                     now() - interval '1 day'); SELECT of tenant_id, collection, id, deleted and
--                     updated_at of those rows only. data and live rows stay unreadable.
--   tenants           SELECT of tenant_id and status, all rows: the relay can hold back events
--                     of a tenant that is not at home on this shard, and jobs can list tenants.
--
-- It gets no INSERT anywhere, no UPDATE but outbox.sent_at, no TRUNCATE (which ignores row-level
-- security), nothing on the outbox sequence or goose's version table, and it owns nothing, so
-- it cannot alter or drop anything.
--
-- The one-day tombstone floor (migrations.TombstoneMinAge) is a safety net under the purge
-- job's own, longer, retention: a tombstone keeps versions (and so ETags) from repeating when an
-- id is re-created, and lets a move's copy and verify see deletions, so even a misconfigured job
-- must not remove one minutes after the delete. A delete sets updated_at = now(), so
-- updated_at is the tombstone's age. Changing the floor takes a new migration (ALTER POLICY on
-- both records policies) and the constant.
--
-- Policies without a TO clause (tenant_isolation of 00003) apply to every role, this one
-- included: a worker transaction that set meridian.tenant would get that tenant's rows through
-- tenant_isolation, within its grants. The RESTRICTIVE policies below repeat the worker's bounds
-- so that setting the tenant cannot widen them (restrictive policies are AND-ed with the OR of
-- the permissive ones).

-- +goose Up
-- +goose StatementBegin
DO $$
BEGIN
    -- Same race-tolerant creation as meridian_app in 00001: the runners of all databases of a
    -- cluster may create this cluster-global role at the same time.
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'meridian_worker') THEN
        BEGIN
            CREATE ROLE meridian_worker
                LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS NOINHERIT;
        EXCEPTION WHEN duplicate_object OR unique_violation THEN
            -- Created concurrently by the runner of another database of this cluster.
            NULL;
        END;
    END IF;

    IF EXISTS (SELECT FROM pg_catalog.pg_roles
               WHERE rolname = 'meridian_worker' AND (rolsuper OR rolbypassrls)) THEN
        RAISE EXCEPTION 'role meridian_worker exists with SUPERUSER or BYPASSRLS; remove those attributes before migrating';
    END IF;
END
$$;
-- +goose StatementEnd

GRANT USAGE ON SCHEMA public TO meridian_worker;

-- Outbox relay: SELECT ... WHERE sent_at IS NULL ORDER BY id LIMIT n, publish, then
-- UPDATE outbox SET sent_at = now() WHERE id = ANY($1) AND sent_at IS NULL.
GRANT SELECT, UPDATE (sent_at) ON outbox TO meridian_worker;
CREATE POLICY worker_relay_read ON outbox FOR SELECT TO meridian_worker
    USING (true);
CREATE POLICY worker_relay_mark ON outbox FOR UPDATE TO meridian_worker
    USING (sent_at IS NULL)
    WITH CHECK (sent_at IS NOT NULL);
CREATE POLICY worker_relay_mark_bound ON outbox AS RESTRICTIVE FOR UPDATE TO meridian_worker
    USING (sent_at IS NULL)
    WITH CHECK (sent_at IS NOT NULL);

-- Expiry: DELETE FROM idempotency_keys WHERE expires_at < now().
GRANT SELECT (tenant_id, key, expires_at), DELETE ON idempotency_keys TO meridian_worker;
CREATE POLICY worker_expiry ON idempotency_keys FOR ALL TO meridian_worker
    USING (expires_at < now());
CREATE POLICY worker_expiry_bound ON idempotency_keys AS RESTRICTIVE FOR ALL TO meridian_worker
    USING (expires_at < now());

-- Tombstone purge: DELETE FROM records WHERE deleted AND updated_at < $cutoff, with $cutoff at
-- least a day ago (younger tombstones and live rows are not visible to this role at all).
GRANT SELECT (tenant_id, collection, id, deleted, updated_at), DELETE ON records TO meridian_worker;
CREATE POLICY worker_purge ON records FOR ALL TO meridian_worker
    USING (deleted AND updated_at < now() - interval '1 day');
CREATE POLICY worker_purge_bound ON records AS RESTRICTIVE FOR ALL TO meridian_worker
    USING (deleted AND updated_at < now() - interval '1 day');

-- Tenant list and status for the relay; no fence, epoch or sequence columns.
GRANT SELECT (tenant_id, status) ON tenants TO meridian_worker;
CREATE POLICY worker_tenants_read ON tenants FOR SELECT TO meridian_worker
    USING (true);
