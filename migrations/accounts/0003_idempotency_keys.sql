-- Idempotency-Key on the API's POSTs: the first answer to (credential, key) is kept for
-- 24 h and replayed to a retry; the same key with another request is refused (422).
CREATE TABLE accounts.idempotency_keys (
    principal    text NOT NULL,              -- sha256 of the Authorization header
    key          text NOT NULL,
    fingerprint  bytea NOT NULL,             -- sha256 of method, path, query and body
    status       integer,                    -- NULL while the first request runs
    content_type text,
    body         bytea,
    created_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (principal, key)
);
CREATE INDEX idempotency_keys_created ON accounts.idempotency_keys (created_at);
