-- requires: metering/0004
-- Billing becomes its own service with its own schema (docs/decisions/0011): the price
-- book, budgets, billing accounts, credit grants and invoices move out of `metering`
-- with their rows, keys, indexes and constraints (SET SCHEMA moves a table as it is).
-- The usage ledger stays in `metering`.
CREATE SCHEMA IF NOT EXISTS billing;

ALTER TABLE metering.price_book SET SCHEMA billing;
ALTER TABLE metering.budgets SET SCHEMA billing;
ALTER TABLE metering.budget_alerts SET SCHEMA billing;
ALTER TABLE metering.billing_accounts SET SCHEMA billing;
ALTER TABLE metering.credit_grants SET SCHEMA billing;
ALTER TABLE metering.invoices SET SCHEMA billing;
ALTER TABLE metering.invoice_lines SET SCHEMA billing;

-- A month whose every tenant is invoiced: the close loop looks here instead of scanning
-- the usage of all time again every round.
CREATE TABLE billing.closed_periods (
    period_start  timestamptz PRIMARY KEY,
    closed_at     timestamptz NOT NULL DEFAULT now(),
    invoices      int NOT NULL
);
