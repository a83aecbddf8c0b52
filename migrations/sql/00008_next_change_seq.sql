-- 00008: meridian_next_change_seq(tenant, epoch), a write's step under its tenant row lock as one
-- statement that refuses.
--
-- A tenant's writes serialise on its tenant row from `UPDATE tenants SET change_seq = change_seq
-- + 1` to COMMIT (change_seq is the gap-free id of /v1/changes, in commit order), so a tenant's
-- write rate is one over that time. The write sends that step, its outbox row, its stored
-- Idempotency-Key answer and COMMIT in one pipelined round trip; for that the step must fail
-- (and so skip the COMMIT, the rest of the pipeline being skipped after an error) when the
-- tenant is fenced or has a newer write epoch than the request, which a plain UPDATE cannot.
-- This function takes the lock, allocates the seq and raises:
--   MR404  no tenant row (in the caller's row-level-security scope)
--   MR421  the tenant's write_epoch is newer than p_epoch (p_epoch 0: not checked)
--   MR503  the tenant is fenced for writes (a move's cutover)
-- in that order (a request routed before a cutover is re-routed at once, DESIGN.md §8).
-- SECURITY INVOKER: it runs as meridian_app under the caller's tenant scope, like the UPDATE it
-- replaces; search_path fixed.

-- +goose Up
-- +goose StatementBegin
CREATE FUNCTION meridian_next_change_seq(p_tenant text, p_epoch bigint) RETURNS bigint
    LANGUAGE plpgsql VOLATILE
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_seq    bigint;
    v_fenced boolean;
    v_epoch  bigint;
BEGIN
    UPDATE public.tenants SET change_seq = change_seq + 1 WHERE tenant_id = p_tenant
        RETURNING change_seq, write_fenced, write_epoch INTO v_seq, v_fenced, v_epoch;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'tenant % not found', p_tenant USING ERRCODE = 'MR404';
    END IF;
    IF p_epoch > 0 AND v_epoch > p_epoch THEN
        RAISE EXCEPTION 'the tenant''s write epoch is %, the request''s %', v_epoch, p_epoch USING ERRCODE = 'MR421';
    END IF;
    IF v_fenced THEN
        RAISE EXCEPTION 'tenant % is fenced for writes', p_tenant USING ERRCODE = 'MR503';
    END IF;
    RETURN v_seq;
END
$$;
-- +goose StatementEnd
REVOKE ALL ON FUNCTION meridian_next_change_seq(text, bigint) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION meridian_next_change_seq(text, bigint) TO meridian_app;
