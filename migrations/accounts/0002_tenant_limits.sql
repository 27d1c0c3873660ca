-- Per-tenant admission limits, enforced by the router (requests/s with a burst, and
-- requests in flight at once).
ALTER TABLE accounts.tenants
    ADD COLUMN rate_limit_rps   numeric(10, 3) NOT NULL DEFAULT 100 CHECK (rate_limit_rps > 0),
    ADD COLUMN rate_limit_burst int NOT NULL DEFAULT 200 CHECK (rate_limit_burst >= 1),
    ADD COLUMN max_concurrency  int NOT NULL DEFAULT 64 CHECK (max_concurrency >= 1);
