-- Budgets: a tenant's monthly spend limit, alert thresholds and optional hard stop.
CREATE TABLE metering.budgets (
    tenant_id      text PRIMARY KEY,
    monthly_limit  numeric(20, 10) NOT NULL CHECK (monthly_limit > 0),
    currency       text NOT NULL DEFAULT 'USD' CHECK (currency ~ '^[A-Z]{3}$'),
    thresholds     int[] NOT NULL DEFAULT '{50,80,100}',
    hard_stop      boolean NOT NULL DEFAULT false,
    updated_at     timestamptz NOT NULL DEFAULT now()
);

-- One row per threshold crossed per period: the primary key makes each alert fire once.
CREATE TABLE metering.budget_alerts (
    tenant_id     text NOT NULL,
    period_start  timestamptz NOT NULL,
    threshold     int NOT NULL,
    spend         numeric(20, 10) NOT NULL,
    crossed_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, period_start, threshold)
);
