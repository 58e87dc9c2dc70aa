-- The CA's state. Records are the JSON every store keeps (`store::records`), in bytea;
-- the columns beside them are what queries select and order by. Text that is ordered is
-- COLLATE "C" (byte order, as in every store, whatever the database's locale).

CREATE TABLE meta (
    key text COLLATE "C" PRIMARY KEY,
    value text NOT NULL
);

CREATE TABLE crl_numbers (
    intermediate_id text COLLATE "C" PRIMARY KEY,
    number bigint NOT NULL
);

CREATE TABLE roots (
    id text COLLATE "C" PRIMARY KEY,
    record bytea NOT NULL
);

CREATE TABLE intermediates (
    id text COLLATE "C" PRIMARY KEY,
    record bytea NOT NULL
);

-- `position` keeps the order keys were added in; a replaced key keeps its place.
CREATE TABLE jwt_keys (
    kid text COLLATE "C" PRIMARY KEY,
    position bigserial NOT NULL,
    record bytea NOT NULL
);

CREATE TABLE federations (
    trust_domain text COLLATE "C" PRIMARY KEY,
    record bytea NOT NULL
);

-- A join token, by the SHA-256 of its secret. Consumed by one conditional UPDATE.
CREATE TABLE tokens (
    hash bytea PRIMARY KEY,
    spiffe_id text NOT NULL,
    created_at bigint NOT NULL,
    expires_at bigint NOT NULL,
    created_by text NOT NULL,
    used_at bigint,
    used_for_serial text
);

CREATE TABLE certificates (
    serial bytea PRIMARY KEY,
    spiffe_id text COLLATE "C" NOT NULL,
    not_after bigint NOT NULL,
    root_id text NOT NULL,
    record bytea NOT NULL,
    der bytea NOT NULL
);
CREATE INDEX certificates_by_identity ON certificates (spiffe_id, serial);
CREATE INDEX certificates_by_expiry ON certificates (not_after, serial);

-- Certificates issued, by root and minute of expiry: the live count by root is the sum
-- over the minutes after now plus an indexed count within the current minute. Counters
-- are split in 16 shards (by the serial's last byte) so that concurrent issuances do not
-- wait for each other's row.
CREATE TABLE live_counts (
    root_id text NOT NULL,
    minute bigint NOT NULL,
    shard smallint NOT NULL,
    n bigint NOT NULL,
    PRIMARY KEY (root_id, minute, shard)
);

CREATE INDEX live_counts_by_minute ON live_counts (minute);

CREATE TABLE counters (
    name text NOT NULL,
    shard smallint NOT NULL,
    value bigint NOT NULL,
    PRIMARY KEY (name, shard)
);
INSERT INTO counters (name, shard, value)
    SELECT 'issued_total', s, 0 FROM generate_series(0, 15) AS s;

CREATE TABLE revocations (
    serial bytea PRIMARY KEY,
    record bytea NOT NULL
);

CREATE TABLE acks (
    spiffe_id text COLLATE "C" PRIMARY KEY,
    version bigint NOT NULL,
    at bigint NOT NULL
);

-- The audit log's hash chain: `value` is the chained entry as every store encodes it.
-- A writer inserts its entries into `audit_pending` in its own transaction; chaining moves
-- them, in id order, into `audit` under the lock of the one row of `audit_head`, which
-- numbers entries without gaps (so issuances never wait for each other there).
CREATE TABLE audit_pending (
    id bigserial PRIMARY KEY,
    time bigint NOT NULL,
    body bytea NOT NULL
);

CREATE TABLE audit (
    sequence bigint PRIMARY KEY,
    time bigint NOT NULL,
    value bytea NOT NULL
);

CREATE TABLE audit_head (
    id int PRIMARY KEY CHECK (id = 1),
    sequence bigint NOT NULL,
    hash bytea
);
INSERT INTO audit_head (id, sequence, hash) VALUES (1, 0, NULL);

CREATE TABLE audit_checkpoints (
    sequence bigint PRIMARY KEY,
    trust_domain text NOT NULL,
    head bytea NOT NULL,
    time bigint NOT NULL,
    signer bytea NOT NULL,
    signature bytea NOT NULL
);
