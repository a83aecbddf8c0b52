-- 00006: an Idempotency-Key row records the change_seq of the write that stored it.
--
-- A tenant move copies the tenant's Idempotency-Key rows to the target so that a retry after
-- the cutover answers the first response (DESIGN.md §8). Copying all of them under the fence
-- would make the write pause grow with the tenant's write rate times the key TTL. Every stored
-- key belongs to a committed write, and a write's change_seq is allocated under the tenant row
-- lock and commits in order, so with the seq on the row the move copies every key up to a mark
-- before the fence and, under it, only the keys of the writes after the mark:
--
--     SELECT ... FROM idempotency_keys WHERE tenant_id = $1 AND seq > $mark
--
-- Rows written before this migration have seq NULL; the copy before the fence takes them.

-- +goose Up
ALTER TABLE idempotency_keys ADD COLUMN seq bigint CHECK (seq >= 1);
CREATE INDEX idempotency_keys_seq_idx ON idempotency_keys (tenant_id, seq);

