-- Renewals in the group commit: `record_issuances` with p_renewing, per item the serial of
-- the certificate a renewal presented (NULL otherwise). Such an item is refused with
-- 'revoked', writing nothing of it, if that certificate is revoked; the check and the write
-- are one transaction. The function without p_renewing (V4) stays for replicas of the
-- previous version during a rolling update.
CREATE FUNCTION record_issuances(
    p_serials bytea[],
    p_spiffe_ids text[],
    p_not_afters bigint[],
    p_root_ids text[],
    p_records bytea[],
    p_ders bytea[],
    p_tokens bytea[],
    p_nows bigint[],
    p_serial_hexes text[],
    p_shard smallint,
    p_audit_items int[],
    p_audit_times bigint[],
    p_audit_bodies bytea[],
    p_renewing bytea[]
) RETURNS text[] LANGUAGE plpgsql AS $$
DECLARE
    n int := coalesce(cardinality(p_serials), 0);
    outcomes text[] := array_fill(NULL::text, ARRAY[n]);
    recorded bigint := 0;
    used bigint;
    expires bigint;
BEGIN
    FOR i IN 1 .. n LOOP
        IF p_renewing[i] IS NOT NULL THEN
            -- `revoke` locks the revoked certificate's row until it commits; waiting for
            -- that lock here, then reading (a new snapshot), a renewal sees every
            -- revocation committed before it is recorded, through whichever replica.
            PERFORM 1 FROM certificates WHERE serial = p_renewing[i] FOR SHARE;
            IF EXISTS (SELECT 1 FROM revocations WHERE serial = p_renewing[i]) THEN
                outcomes[i] := 'revoked';
                CONTINUE;
            END IF;
        END IF;
        IF p_tokens[i] IS NOT NULL THEN
            -- As in `record_issuance`: a concurrent redeemer waits for the row, then finds
            -- it used; a later item of this batch with the same token finds it used too.
            UPDATE tokens SET used_at = p_nows[i], used_for_serial = p_serial_hexes[i]
                WHERE hash = p_tokens[i] AND used_at IS NULL AND expires_at > p_nows[i];
            IF NOT FOUND THEN
                SELECT t.used_at, t.expires_at INTO used, expires
                    FROM tokens t WHERE hash = p_tokens[i];
                IF NOT FOUND THEN
                    outcomes[i] := 'unknown';
                ELSIF used IS NOT NULL THEN
                    outcomes[i] := 'used:' || used;
                ELSE
                    outcomes[i] := 'expired:' || expires;
                END IF;
                CONTINUE;
            END IF;
        END IF;
        INSERT INTO certificates (serial, spiffe_id, not_after, root_id, record, der)
            VALUES (p_serials[i], p_spiffe_ids[i], p_not_afters[i], p_root_ids[i],
                    p_records[i], p_ders[i])
            ON CONFLICT (serial) DO NOTHING;
        IF NOT FOUND THEN
            outcomes[i] := 'serial';
            -- The token this item consumed above was unused before: it is again.
            IF p_tokens[i] IS NOT NULL THEN
                UPDATE tokens SET used_at = NULL, used_for_serial = NULL
                    WHERE hash = p_tokens[i];
            END IF;
            CONTINUE;
        END IF;
        recorded := recorded + 1;
    END LOOP;
    IF recorded > 0 THEN
        INSERT INTO live_counts (root_id, minute, shard, n)
            SELECT a.root_id, a.not_after / 60, p_shard, count(*)
                FROM unnest(p_root_ids, p_not_afters, outcomes) AS a(root_id, not_after, outcome)
                WHERE a.outcome IS NULL
                GROUP BY 1, 2 ORDER BY 1, 2
            ON CONFLICT (root_id, minute, shard) DO UPDATE SET n = live_counts.n + excluded.n;
        UPDATE counters SET value = value + recorded
            WHERE name = 'issued_total' AND shard = p_shard;
        INSERT INTO audit_pending (time, body)
            SELECT a.t, a.b
                FROM unnest(p_audit_items, p_audit_times, p_audit_bodies) WITH ORDINALITY
                    AS a(item, t, b, k)
                WHERE outcomes[a.item] IS NULL
                ORDER BY a.k;
    END IF;
    RETURN outcomes;
END;
$$;
