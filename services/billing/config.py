"""Billing's settings, read once at start (docs/config.md lists every key)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from edgeinfer.shared.config import ConfigError, env_float, env_optional


@dataclass(frozen=True)
class StripeConfig:
    api_key: str
    api_base: str | None = None  # e.g. localstripe's http://127.0.0.1:8420


@dataclass(frozen=True)
class BillingConfig:
    # Late usage (a runner's outbox retrying within JetStream's duplicate window) gets this
    # long after a month ends to land before the month is closed into invoices.
    invoice_close_grace_s: float = 3600.0
    invoice_check_interval_s: float = 600.0
    budget_interval_s: float = 2.0
    stripe_interval_s: float = 60.0
    stripe: StripeConfig | None = None  # None: invoices are not pushed anywhere
    # Portal session cookies are encrypted and signed with it; None: the launcher keeps one
    # in the state directory.
    portal_secret: str | None = None


def billing_config_from_env(env: Mapping[str, str]) -> BillingConfig:
    return BillingConfig(
        invoice_close_grace_s=env_float(env, "EDGEINFER_INVOICE_CLOSE_GRACE_S",
                                        BillingConfig.invoice_close_grace_s, lo=0, hi=31 * 86400),
        stripe=stripe_config_from_env(env),
        portal_secret=env_optional(env, "EDGEINFER_PORTAL_SECRET"),
    )


def stripe_config_from_env(env: Mapping[str, str]) -> StripeConfig | None:
    """None (no Stripe) unless EDGEINFER_STRIPE_API_KEY is set."""
    key = env_optional(env, "EDGEINFER_STRIPE_API_KEY")
    if key is None:
        return None
    if not key.startswith(("sk_", "rk_")):
        raise ConfigError("EDGEINFER_STRIPE_API_KEY must be a Stripe secret or restricted key"
                          " (sk_… or rk_…)")
    return StripeConfig(key, env_optional(env, "EDGEINFER_STRIPE_API_BASE"))
