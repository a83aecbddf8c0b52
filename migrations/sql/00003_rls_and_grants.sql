-- 00003: row-level security on every tenant table, and meridian_app's grants.
--
-- Every transaction of the services starts with
--     SELECT set_config('meridian.tenant', $1, true)   -- true: for this transaction only
-- and the policies below let it see and write only rows whose tenant_id equals that setting.
-- current_setting(..., true) is NULL when the setting was never defined in the session and ''
-- after a transaction-local value went away; neither equals a tenant id, so a transaction that
-- forgot to set it sees nothing and can write nothing. The expression is stable, so the planner
-- uses it as an index key like a parameter.
--
-- FORCE makes the policies apply to the table owner too (superusers and BYPASSRLS roles are the
-- only exceptions, and meridian_app is neither). Referential-integrity checks and cascades are
-- not subject to RLS, so the foreign keys of 00002 keep working.

-- +goose Up
ALTER TABLE tenants ENABLE ROW LEVEL SECURITY;
ALTER TABLE tenants FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON tenants
    USING (tenant_id = current_setting('meridian.tenant', true))
    WITH CHECK (tenant_id = current_setting('meridian.tenant', true));

ALTER TABLE records ENABLE ROW LEVEL SECURITY;
ALTER TABLE records FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON records
    USING (tenant_id = current_setting('meridian.tenant', true))
    WITH CHECK (tenant_id = current_setting('meridian.tenant', true));

ALTER TABLE idempotency_keys ENABLE ROW LEVEL SECURITY;
ALTER TABLE idempotency_keys FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON idempotency_keys
    USING (tenant_id = current_setting('meridian.tenant', true))
    WITH CHECK (tenant_id = current_setting('meridian.tenant', true));

ALTER TABLE outbox ENABLE ROW LEVEL SECURITY;
ALTER TABLE outbox FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON outbox
    USING (tenant_id = current_setting('meridian.tenant', true))
    WITH CHECK (tenant_id = current_setting('meridian.tenant', true));

-- DML only: no TRUNCATE (it ignores RLS), no REFERENCES, no TRIGGER, nothing on goose's
-- version table. PUBLIC keeps its default CONNECT on the database.
GRANT USAGE ON SCHEMA public TO meridian_app;
GRANT SELECT, INSERT, UPDATE, DELETE ON tenants, records, idempotency_keys, outbox TO meridian_app;
GRANT USAGE ON SEQUENCE outbox_id_seq TO meridian_app;
