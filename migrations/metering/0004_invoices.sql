-- Closed monthly invoices, their lines, the tenant's billing account (free tier, Stripe
-- customer) and prepaid credit grants. A closed invoice is never updated except to record
-- its Stripe ids; late usage goes on a later invoice as adjustment lines.
CREATE TABLE metering.billing_accounts (
    tenant_id           text PRIMARY KEY,
    -- Up to this much of each month's own usage is free (in the invoice's currency).
    free_tier_monthly   numeric(20, 2) NOT NULL DEFAULT 0 CHECK (free_tier_monthly >= 0),
    currency            text NOT NULL DEFAULT 'USD' CHECK (currency ~ '^[A-Z]{3}$'),
    stripe_customer_id  text UNIQUE,
    -- A $0 monthly subscription that carries the invoices our usage items go on.
    stripe_subscription_id  text UNIQUE,
    updated_at          timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE metering.credit_grants (
    id          text PRIMARY KEY,
    tenant_id   text NOT NULL,
    currency    text NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
    amount      numeric(20, 2) NOT NULL CHECK (amount > 0),
    reason      text NOT NULL,
    granted_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz
);
CREATE INDEX credit_grants_tenant ON metering.credit_grants (tenant_id);

CREATE TABLE metering.invoices (
    id                 text PRIMARY KEY,
    tenant_id          text NOT NULL,
    period_start       timestamptz NOT NULL,
    period_end         timestamptz NOT NULL CHECK (period_end > period_start),
    currency           text NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
    subtotal           numeric(20, 2) NOT NULL,
    discounts          numeric(20, 2) NOT NULL CHECK (discounts <= 0),
    total              numeric(20, 2) NOT NULL,
    closed_at          timestamptz NOT NULL DEFAULT now(),
    stripe_invoice_id  text UNIQUE,
    -- Set once the invoice is in Stripe (or had nothing to charge: no Stripe invoice).
    stripe_pushed_at   timestamptz,
    UNIQUE (tenant_id, period_start, currency)
);

CREATE TABLE metering.invoice_lines (
    -- Stable and unique: Stripe invoice items carry it in their metadata, so a retried push
    -- finds what an interrupted one created instead of charging twice.
    id                      text PRIMARY KEY,
    invoice_id              text NOT NULL REFERENCES metering.invoices (id),
    line_no                 int NOT NULL,
    kind                    text NOT NULL CHECK (kind IN ('usage', 'adjustment', 'free_tier', 'credit')),
    usage_period_start      timestamptz NOT NULL,
    deployment_id           text,
    gpu_class               text,
    region                  text,
    unit_price              numeric(20, 10),
    gpu_us                  bigint NOT NULL DEFAULT 0,
    requests                bigint NOT NULL DEFAULT 0,
    amount                  numeric(20, 2) NOT NULL,
    credit_grant_id         text REFERENCES metering.credit_grants (id),
    description             text NOT NULL,
    stripe_invoice_item_id  text UNIQUE,
    UNIQUE (invoice_id, line_no)
);
CREATE INDEX invoice_lines_grant ON metering.invoice_lines (credit_grant_id)
    WHERE credit_grant_id IS NOT NULL;
