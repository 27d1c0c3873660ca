-- Tenant schedules per deployment: [{cron, timezone, duration_s, pop, min_replicas}, ...]
-- (shared/schedules.py validates them; the autoscaler keeps min_replicas warm while active).
ALTER TABLE registry.deployments ADD COLUMN schedules jsonb NOT NULL DEFAULT '[]';
