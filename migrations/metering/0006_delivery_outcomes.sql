-- Only what was delivered is billed (docs/billing.md): a usage event is `pending` until a
-- router confirms its answer reached the client (`delivered`), or `undelivered` once the
-- grace passes without one. Its GPU time stays in the ledger either way (conservation:
-- runners' counters still reconcile against gpu_us); only delivered time is billable.
-- Every event recorded before this migration was billed as it came: `delivered`.
ALTER TABLE metering.usage_events
    ADD COLUMN outcome text NOT NULL DEFAULT 'delivered'
        CHECK (outcome IN ('pending', 'delivered', 'undelivered'));
ALTER TABLE metering.usage_events ALTER COLUMN outcome SET DEFAULT 'pending';

-- Settling looks events up by request id and by age; both indexes hold unsettled rows only.
CREATE INDEX usage_events_unsettled_request ON metering.usage_events (request_id)
    WHERE outcome <> 'delivered';
CREATE INDEX usage_events_pending_age ON metering.usage_events (received_at)
    WHERE outcome = 'pending';

-- The hourly sums split by outcome; gpu_us and requests stay the totals (pending is the rest).
ALTER TABLE metering.usage_hourly
    ADD COLUMN delivered_gpu_us bigint NOT NULL DEFAULT 0,
    ADD COLUMN delivered_requests bigint NOT NULL DEFAULT 0,
    ADD COLUMN undelivered_gpu_us bigint NOT NULL DEFAULT 0,
    ADD COLUMN undelivered_requests bigint NOT NULL DEFAULT 0;
UPDATE metering.usage_hourly SET delivered_gpu_us = gpu_us, delivered_requests = requests;

-- Routers' confirmations not yet matched with their usage event (either may come first).
CREATE TABLE metering.deliveries (
    request_id   text PRIMARY KEY,
    received_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX deliveries_age ON metering.deliveries (received_at);

-- Billing's one view keeps its columns and now sums only delivered usage.
CREATE OR REPLACE VIEW metering.billable_usage_hourly AS
    SELECT tenant_id, hour, deployment_id, pop, region, gpu_class,
           delivered_gpu_us AS gpu_us, delivered_requests AS requests
      FROM metering.usage_hourly
     WHERE delivered_requests > 0;
