"""Every config key the code reads is documented in docs/config.md."""

import re
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_every_config_key_is_documented() -> None:
    used: set[str] = set()
    for path in [*ROOT.glob("shared/**/*.py"), *ROOT.glob("services/**/*.py")]:
        used |= set(re.findall(r'"(EDGEINFER_[A-Z_]+|NATS_URL|DATABASE_URL)"', path.read_text()))
    documented = set(re.findall(r"`(EDGEINFER_[A-Z_]+|NATS_URL|DATABASE_URL)`",
                                (ROOT / "docs" / "config.md").read_text()))
    assert used, "found no config keys: the pattern is wrong"
    assert used - documented == set()


def documented_defaults() -> list[tuple[str, str]]:
    """(key, default) for every row of docs/config.md whose default is a literal value."""
    rows = re.findall(r"^\| `([A-Z_]+)` \| `([^`]*)`[^|]*\|", (ROOT / "docs" / "config.md").read_text(),
                      re.MULTILINE)
    return [(key, value) for key, value in rows if "$" not in value]


def config_builders() -> list[tuple[str, Callable[[dict[str, str]], object]]]:
    """Every settings object a process builds from its environment at start."""
    from edgeinfer.services.autoscaler.service import autoscaler_config_from_env
    from edgeinfer.services.billing.config import billing_config_from_env
    from edgeinfer.services.launcher.stack import stack_config_from_env
    from edgeinfer.services.metering.config import metering_config_from_env
    from edgeinfer.services.router.config import router_config_from_env
    from edgeinfer.services.runner.config import runner_config_from_env
    from edgeinfer.shared.config import platform_from_env
    from edgeinfer.shared.topology import pops_from_env

    runner_required = {k: "x" for k in (
        "EDGEINFER_RUNNER_ID", "EDGEINFER_POP", "EDGEINFER_REGION", "EDGEINFER_RUNNER_URL",
        "EDGEINFER_DEPLOYMENT_ID", "EDGEINFER_MODEL_VERSION", "EDGEINFER_ARTIFACT_DIGEST",
        "NATS_URL")}
    return [
        ("platform", platform_from_env), ("pops", pops_from_env),
        ("router", router_config_from_env), ("metering", metering_config_from_env),
        ("billing", billing_config_from_env), ("autoscaler", autoscaler_config_from_env),
        ("runner", lambda env: runner_config_from_env({**runner_required, **env})),
        ("stack", lambda env: stack_config_from_env(platform_from_env(env), env=env)),
    ]


def test_every_documented_default_is_the_codes_default() -> None:
    """Setting a key to the default docs/config.md gives it builds the same settings as not
    setting it: the table and the code's one place of defaults agree."""
    defaults = documented_defaults()
    assert len(defaults) > 30, "found few documented defaults: the pattern is wrong"
    wrong = []
    for name, build in config_builders():
        unset = build({})
        for key, value in defaults:
            if build({key: value}) != unset:
                wrong.append(f"{key} = {value!r} ({name})")
    assert wrong == [], f"docs/config.md's defaults differ from the code's: {wrong}"


def test_every_documented_key_is_read_somewhere() -> None:
    code = "\n".join(p.read_text() for p in [*ROOT.glob("shared/**/*.py"),
                                             *ROOT.glob("services/**/*.py")])
    documented = set(re.findall(r"^\| `([A-Z_]+)`", (ROOT / "docs" / "config.md").read_text(),
                                re.MULTILINE))
    stale = sorted(key for key in documented if f'"{key}"' not in code)
    assert stale == [], f"docs/config.md documents keys nothing reads: {stale}"
