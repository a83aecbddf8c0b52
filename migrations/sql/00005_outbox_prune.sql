-- 00005: the outbox relay prunes sent rows (meridian_worker may DELETE outbox rows already sent).
--
-- Outbox rows stay after the relay has published them, for a replay window (RelayConfig.Retention,
-- default 24 h): a consumer that finds a gap in a tenant's change sequence, and /v1/changes
-- resuming from a Last-Event-ID, re-read the missing events from the outbox (DESIGN.md §7). The
-- relay then deletes them in bounded batches:
--
--     DELETE FROM outbox WHERE id = ANY(ARRAY(
--         SELECT id FROM outbox WHERE sent_at < $cutoff LIMIT $n))
--
-- meridian_worker gets DELETE on outbox, but only of rows with sent_at IS NOT NULL: an unsent
-- row is an event nobody has seen yet, and deleting it would lose an invalidation for good (the
-- consumers would never learn of the write). Unsent rows stay invisible to its DELETE whatever
-- the job's cutoff, so a misconfigured retention can shorten the replay window but never drop an
-- unpublished event. How long a sent row must stay is the job's setting, not the schema's.
--
-- As in 00004, the permissive policy grants the rows and a RESTRICTIVE one repeats the bound:
-- tenant_isolation (00003) has no TO clause, so a worker transaction that set meridian.tenant
-- would otherwise be allowed to delete that tenant's unsent rows through it (restrictive
-- policies are AND-ed with the OR of the permissive ones). The DELETE's WHERE reads outbox
-- columns, so the worker's SELECT grant and worker_relay_read (00004) apply as well; that
-- policy already lets it see every row.

-- +goose Up
GRANT DELETE ON outbox TO meridian_worker;
CREATE POLICY worker_prune ON outbox FOR DELETE TO meridian_worker
    USING (sent_at IS NOT NULL);
CREATE POLICY worker_prune_bound ON outbox AS RESTRICTIVE FOR DELETE TO meridian_worker
    USING (sent_at IS NOT NULL);
