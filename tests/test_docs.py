"""Every config key the code reads is documented in docs/config.md."""

import re
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
