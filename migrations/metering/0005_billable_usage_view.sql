-- The one way billing reads usage (services/metering/README.md, "What others may read"):
-- hourly sums per tenant, deployment, PoP, region and GPU class, as the ledger holds them.
-- Billing never reads metering's tables; when the ledger's layout changes, this view keeps
-- its columns (or a v2 view is added beside it).
CREATE VIEW metering.billable_usage_hourly AS
    SELECT tenant_id, hour, deployment_id, pop, region, gpu_class, gpu_us, requests
      FROM metering.usage_hourly;
