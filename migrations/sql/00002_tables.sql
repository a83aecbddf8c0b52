-- 00002: the tenant tables of a shard database.
--
-- Conventions:
--   * Every tenant table starts with tenant_id, and every index that a request path uses starts
--     with it too, so a tenant's rows are one contiguous index range.
--   * Identifiers (tenant_id, collection, id) use the "C" collation: byte order is the same on
--     every cluster whatever locale initdb picked, so keyset cursors and a move's primary-key
--     batches (source and target shard may live on different clusters) order rows identically.
--   * Tenant rows reference tenants(tenant_id) ON DELETE CASCADE: no row can exist for a tenant
--     the shard does not know, and a move's cleanup removes a tenant with one DELETE.
--   * Migrations are forward-only (no Down sections): a shard's data is never rolled back by
--     dropping tables.

-- +goose Up

-- tenants: one row per tenant homed on (or moving into) this shard.
--   status       lifecycle label owned by the API and rebalancer (e.g. active, importing, moved).
--   write_fenced set by a move's cutover on the source shard; a write transaction reads it (and
--                bumps change_seq) in its own transaction, so a stale API node cannot write
--                behind a cutover.
--   write_epoch  the shard map's write epoch for the tenant when the fence/row was last set.
--   change_seq   last allocated per-tenant change sequence: a write does
--                UPDATE tenants SET change_seq = change_seq + 1 ... RETURNING change_seq, write_fenced
--                which both checks the fence and numbers the outbox event.
CREATE TABLE tenants (
    tenant_id    text COLLATE "C" PRIMARY KEY
                 CHECK (tenant_id ~ '^[a-z0-9][a-z0-9-]{2,62}$'),
    status       text        NOT NULL DEFAULT 'active' CHECK (status <> ''),
    write_fenced boolean     NOT NULL DEFAULT false,
    write_epoch  bigint      NOT NULL DEFAULT 0 CHECK (write_epoch >= 0),
    change_seq   bigint      NOT NULL DEFAULT 0 CHECK (change_seq >= 0),
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now()
);

-- records: a tenant's documents.
--   version  starts at 1 and only grows, across delete and re-create too.
--   deleted  tombstone: a DELETE sets deleted = true and version = version + 1 (data may be
--            emptied). Keeping the row keeps versions monotonic, and lets a move's
--            version-guarded copy (upsert ... WHERE target.version < source.version) see that a
--            row was deleted instead of bringing it back. A purge job removes old tombstones.
-- The primary key (tenant_id, collection, id) serves single reads, batch reads (id = ANY),
-- keyset pages in both directions (id > $c ORDER BY id, id < $c ORDER BY id DESC) and a move's
-- primary-key batches.
CREATE TABLE records (
    tenant_id  text COLLATE "C" NOT NULL REFERENCES tenants (tenant_id) ON DELETE CASCADE,
    collection text COLLATE "C" NOT NULL CHECK (collection ~ '^[a-z][a-z0-9_]{0,62}$'),
    id         text COLLATE "C" NOT NULL CHECK (id ~ '^[A-Za-z0-9_-]{1,128}$'),
    version    bigint      NOT NULL CHECK (version >= 1),
    data       jsonb       NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(data) = 'object'),
    deleted    boolean     NOT NULL DEFAULT false,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, collection, id)
);

-- where[field]=value filters are written as data @> '{"field": value}'; jsonb_path_ops indexes
-- exactly that containment operator and is smaller than the default jsonb_ops. The planner
-- combines it with the primary key range (BitmapAnd) or filters the key-ordered scan.
CREATE INDEX records_data_path_idx ON records USING gin (data jsonb_path_ops);

-- Tombstone purge: DELETE ... WHERE deleted AND updated_at < $cutoff, across tenants or (with
-- tenant_id as a second column) for one tenant. Partial, so live rows cost nothing.
CREATE INDEX records_tombstone_idx ON records (updated_at, tenant_id) WHERE deleted;

-- idempotency_keys: the first response of a request carrying Idempotency-Key, stored in the
-- write's own transaction. A concurrent duplicate blocks on the primary key until the first
-- commits, then reads its row.
--   request_hash  digest of method, path and body; a reused key with another hash is 422.
--   status, headers, body  the response replayed verbatim.
CREATE TABLE idempotency_keys (
    tenant_id    text COLLATE "C" NOT NULL REFERENCES tenants (tenant_id) ON DELETE CASCADE,
    key          text        NOT NULL CHECK (length(key) BETWEEN 1 AND 255),
    request_hash bytea       NOT NULL,
    status       integer     NOT NULL CHECK (status BETWEEN 100 AND 599),
    headers      jsonb       NOT NULL DEFAULT '{}',
    body         bytea       NOT NULL DEFAULT '',
    created_at   timestamptz NOT NULL DEFAULT now(),
    expires_at   timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, key)
);

-- Expiry cleanup: DELETE FROM idempotency_keys WHERE expires_at < now().
CREATE INDEX idempotency_keys_expires_idx ON idempotency_keys (expires_at);

-- outbox: one change event per write, appended in the write's transaction.
--   id      global order on this shard; the relay publishes with it as the message id.
--   seq     the tenant's change_seq for this write: the /v1/changes event id (gap-free per tenant).
--   op      create, update or delete.
--   lsn     WAL position recorded by the writer (for consistency tokens); NULL if not known.
--   sent_at NULL until the relay has published the event.
CREATE TABLE outbox (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id  text COLLATE "C" NOT NULL REFERENCES tenants (tenant_id) ON DELETE CASCADE,
    seq        bigint      NOT NULL CHECK (seq >= 1),
    collection text COLLATE "C" NOT NULL,
    record_id  text COLLATE "C" NOT NULL,
    op         text        NOT NULL CHECK (op IN ('create', 'update', 'delete')),
    version    bigint      NOT NULL CHECK (version >= 1),
    lsn        pg_lsn,
    created_at timestamptz NOT NULL DEFAULT now(),
    sent_at    timestamptz,
    -- Also the index for /v1/changes: WHERE tenant_id = $1 AND seq > $last ORDER BY seq.
    CONSTRAINT outbox_tenant_seq_key UNIQUE (tenant_id, seq)
);

-- Relay: SELECT ... WHERE sent_at IS NULL ORDER BY id LIMIT n. Stays tiny (only unsent rows).
CREATE INDEX outbox_unsent_idx ON outbox (id) WHERE sent_at IS NULL;

-- Retention: DELETE FROM outbox WHERE sent_at < $cutoff.
CREATE INDEX outbox_sent_at_idx ON outbox (sent_at) WHERE sent_at IS NOT NULL;
