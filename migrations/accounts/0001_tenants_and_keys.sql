-- accounts: tenants and their API keys (owned by services/api).
CREATE SCHEMA IF NOT EXISTS accounts;

CREATE TABLE accounts.tenants (
    id          text PRIMARY KEY,
    name        text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    status      text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'suspended')),
    created_at  timestamptz NOT NULL DEFAULT now()
);

-- Keys are stored only as SHA-256 hashes; `prefix` (the first characters) lets a tenant
-- tell its keys apart without the key being recoverable.
CREATE TABLE accounts.api_keys (
    id          text PRIMARY KEY,
    tenant_id   text NOT NULL REFERENCES accounts.tenants (id),
    key_hash    text NOT NULL UNIQUE,
    prefix      text NOT NULL,
    label       text NOT NULL DEFAULT '',
    created_at  timestamptz NOT NULL DEFAULT now(),
    revoked_at  timestamptz
);
CREATE INDEX api_keys_tenant ON accounts.api_keys (tenant_id);
