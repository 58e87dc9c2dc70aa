-- An issuance as one statement (one round trip, its own transaction): the certificate
-- under its serial, the join token consumed, the counters and the audit entries. A refusal
-- raises, which undoes all of it: TR001 a serial already used; TR002 the token, with
-- 'unknown', 'used:<unix time>' or 'expired:<unix time>' as the message.
CREATE FUNCTION record_issuance(
    p_serial bytea,
    p_spiffe_id text,
    p_not_after bigint,
    p_root_id text,
    p_record bytea,
    p_der bytea,
    p_shard smallint,
    p_token bytea,
    p_now bigint,
    p_serial_hex text,
    p_audit_times bigint[],
    p_audit_bodies bytea[]
) RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    used bigint;
    expires bigint;
BEGIN
    INSERT INTO certificates (serial, spiffe_id, not_after, root_id, record, der)
        VALUES (p_serial, p_spiffe_id, p_not_after, p_root_id, p_record, p_der)
        ON CONFLICT (serial) DO NOTHING;
    IF NOT FOUND THEN
        RAISE EXCEPTION USING ERRCODE = 'TR001', MESSAGE = 'serial already used';
    END IF;
    IF p_token IS NOT NULL THEN
        -- A concurrent redeemer waits for the row, then finds it used: exactly once.
        UPDATE tokens SET used_at = p_now, used_for_serial = p_serial_hex
            WHERE hash = p_token AND used_at IS NULL AND expires_at > p_now;
        IF NOT FOUND THEN
            SELECT t.used_at, t.expires_at INTO used, expires FROM tokens t WHERE hash = p_token;
            IF NOT FOUND THEN
                RAISE EXCEPTION USING ERRCODE = 'TR002', MESSAGE = 'unknown';
            ELSIF used IS NOT NULL THEN
                RAISE EXCEPTION USING ERRCODE = 'TR002', MESSAGE = 'used:' || used;
            ELSE
                RAISE EXCEPTION USING ERRCODE = 'TR002', MESSAGE = 'expired:' || expires;
            END IF;
        END IF;
    END IF;
    INSERT INTO live_counts (root_id, minute, shard, n)
        VALUES (p_root_id, p_not_after / 60, p_shard, 1)
        ON CONFLICT (root_id, minute, shard) DO UPDATE SET n = live_counts.n + 1;
    UPDATE counters SET value = value + 1 WHERE name = 'issued_total' AND shard = p_shard;
    INSERT INTO audit_pending (time, body)
        SELECT a.t, a.b FROM unnest(p_audit_times, p_audit_bodies) WITH ORDINALITY AS a(t, b, n)
        ORDER BY a.n;
END;
$$;
