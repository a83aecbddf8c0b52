-- 00007: meridian_schema_version(), the schema version for the roles that cannot read goose's
-- table.
--
-- A tenant move copies rows between two shards' databases, which must be at the same schema
-- version (DESIGN.md §8: the copy, verify and mirror statements assume one set of columns). The
-- move controller connects as meridian_app, which has no grant on goose_db_version (00003), so
-- this function answers the highest applied version and nothing else: owned by the migration
-- runner, SECURITY DEFINER with a fixed search_path (no caller-controlled schema is searched),
-- executable by meridian_app only.

-- +goose Up
-- +goose StatementBegin
CREATE FUNCTION meridian_schema_version() RETURNS bigint
    LANGUAGE sql STABLE SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$ SELECT max(version_id) FROM public.goose_db_version WHERE is_applied $$;
-- +goose StatementEnd
REVOKE ALL ON FUNCTION meridian_schema_version() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION meridian_schema_version() TO meridian_app;
