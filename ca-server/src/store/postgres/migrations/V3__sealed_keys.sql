-- The CA's private keys, sealed (AES-256-GCM under the key-encryption key every replica
-- reads from a file; the key's name and the trust domain are its associated data), so
-- that a key made on one replica signs on all of them. Written once, never updated.
CREATE TABLE sealed_keys (
    name text COLLATE "C" PRIMARY KEY,
    sealed bytea NOT NULL
);
