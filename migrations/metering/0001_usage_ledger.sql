-- metering: the usage ledger (exactly once, keyed by event id), hourly aggregates, price book.
CREATE SCHEMA IF NOT EXISTS metering;

CREATE TABLE metering.usage_events (
    event_id       text PRIMARY KEY,
    tenant_id      text NOT NULL,
    request_id     text NOT NULL,
    deployment_id  text NOT NULL,
    model_version  text NOT NULL,
    runner_id      text NOT NULL,
    pop            text NOT NULL,
    region         text NOT NULL,
    gpu_class      text NOT NULL,
    gpu_share      numeric(7, 4) NOT NULL CHECK (gpu_share > 0 AND gpu_share <= 1),
    busy_us        bigint NOT NULL CHECK (busy_us >= 0),
    gpu_us         bigint NOT NULL CHECK (gpu_us >= 0),
    started_at     timestamptz NOT NULL,
    ended_at       timestamptz NOT NULL CHECK (ended_at >= started_at),
    received_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX usage_events_tenant_time ON metering.usage_events (tenant_id, started_at);

-- Written in the same transaction as the events it sums; the hour is the hour the usage
-- happened (started_at), so late events land where they belong.
CREATE TABLE metering.usage_hourly (
    tenant_id      text NOT NULL,
    hour           timestamptz NOT NULL,
    deployment_id  text NOT NULL,
    pop            text NOT NULL,
    region         text NOT NULL,
    gpu_class      text NOT NULL,
    gpu_us         bigint NOT NULL,
    requests       bigint NOT NULL,
    PRIMARY KEY (tenant_id, hour, deployment_id, pop, region, gpu_class)
);

-- Prices per GPU-second, per GPU class and region, with effective dates.
CREATE TABLE metering.price_book (
    gpu_class       text NOT NULL,
    region          text NOT NULL,
    currency        text NOT NULL DEFAULT 'USD' CHECK (currency ~ '^[A-Z]{3}$'),
    unit_price      numeric(20, 10) NOT NULL CHECK (unit_price >= 0),
    effective_from  timestamptz NOT NULL,
    PRIMARY KEY (gpu_class, region, effective_from)
);

-- List prices at launch (per GPU-second). `cpu` is the CPU slot that stands in for a GPU
-- where none exists.
INSERT INTO metering.price_book (gpu_class, region, unit_price, effective_from) VALUES
    ('cpu',  'eu-west', 0.0001000000, '2026-01-01T00:00:00Z'),
    ('cpu',  'us-east', 0.0000900000, '2026-01-01T00:00:00Z'),
    ('l40s', 'eu-west', 0.0004200000, '2026-01-01T00:00:00Z'),
    ('l40s', 'us-east', 0.0003900000, '2026-01-01T00:00:00Z'),
    ('h100', 'eu-west', 0.0008300000, '2026-01-01T00:00:00Z'),
    ('h100', 'us-east', 0.0007800000, '2026-01-01T00:00:00Z');
