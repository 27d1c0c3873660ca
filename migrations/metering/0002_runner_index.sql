-- Reconciliation sums the ledger per runner (services/metering/reconcile.py).
CREATE INDEX usage_events_runner ON metering.usage_events (runner_id);
