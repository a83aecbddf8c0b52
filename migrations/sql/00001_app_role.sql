-- 00001: the role the services connect as.
--
-- meridian_app is a LOGIN role that is not a superuser, cannot bypass row-level security, and
-- owns nothing: every table is owned by the role that runs the migrations. It therefore cannot
-- ALTER or DROP a table, nor switch row-level security off, and it only gets the DML grants
-- given in 00003.
--
-- Roles are global to a Postgres cluster while migrations run per database, and the runner
-- migrates every shard database of a cluster at the same time. Two runners can therefore both
-- see "no such role" and both CREATE ROLE; the loser blocks on pg_authid's unique index until the
-- winner commits and then fails with unique_violation (or duplicate_object when the role was
-- already committed). Either error means "the role exists", which is what we wanted.
--
-- The role gets no password here: production sets one out of band (ALTER ROLE ... PASSWORD),
-- tests use trust authentication on loopback.

-- +goose Up
-- +goose StatementBegin
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'meridian_app') THEN
        BEGIN
            CREATE ROLE meridian_app
                LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS NOINHERIT;
        EXCEPTION WHEN duplicate_object OR unique_violation THEN
            -- Created concurrently by the runner of another database of this cluster.
            NULL;
        END;
    END IF;

    -- A pre-existing role with these powers would silently defeat row-level security; refuse
    -- rather than ALTER it (ALTER ROLE from several databases at once can fail with "tuple
    -- concurrently updated", and an operator should know why the role was like that).
    IF EXISTS (SELECT FROM pg_catalog.pg_roles
               WHERE rolname = 'meridian_app' AND (rolsuper OR rolbypassrls)) THEN
        RAISE EXCEPTION 'role meridian_app exists with SUPERUSER or BYPASSRLS; remove those attributes before migrating';
    END IF;
END
$$;
-- +goose StatementEnd
