"""Each service's README says, under the same headings, what it owns, what it consumes and
which of its modules are pure; every NATS subject and HTTP route its code names is there."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest

from edgeinfer.shared.subjects import Subjects

ROOT = Path(__file__).resolve().parent.parent
SERVICES = sorted(p.parent.name for p in (ROOT / "services").glob("*/__init__.py"))
HEADINGS = ("## Owns", "## Consumes", "## Pure modules", "## Config")
NAMESPACE = "nsx"
PLACEHOLDER = "PLACEHOLDER"


def code_of(service: str) -> str:
    return "\n".join(p.read_text() for p in sorted((ROOT / "services" / service).rglob("*.py")))


def readme_of(service: str) -> str:
    path = ROOT / "services" / service / "README.md"
    assert path.exists(), f"services/{service} has no README.md"
    return path.read_text()


def subject_pattern(name: str) -> re.Pattern[str]:
    """How the README writes a subject: `<ns>.usage.gpu.<pop>`, `<NS>_USAGE`, `<ns>_artifacts`."""
    subjects = Subjects(NAMESPACE)
    member = inspect.getattr_static(Subjects, name)
    if isinstance(member, property):
        value = getattr(subjects, name)
    else:
        arity = len(inspect.signature(member).parameters) - 1
        value = getattr(subjects, name)(*[PLACEHOLDER] * arity)
    text = re.escape(value)
    text = text.replace(re.escape(NAMESPACE.upper()), "<NS>").replace(re.escape(NAMESPACE), "<ns>")
    text = text.replace(PLACEHOLDER, "<[a-z_]+>")
    return re.compile(re.escape("`") + text.replace(re.escape("<ns>"), "<ns>")
                      .replace(re.escape("<NS>"), "<NS>") + re.escape("`"))


@pytest.mark.parametrize("service", SERVICES)
def test_every_readme_has_the_same_headings(service: str) -> None:
    readme = readme_of(service)
    missing = [h for h in HEADINGS if not re.search(f"^{re.escape(h)}$", readme, re.MULTILINE)]
    assert missing == [], f"services/{service}/README.md lacks {missing}"


@pytest.mark.parametrize("service", SERVICES)
def test_every_subject_the_code_names_is_in_the_readme(service: str) -> None:
    # `self._subjects.usage(...)`, or `s.usage` after `s = self._subjects`.
    found = re.findall(r"\b(?:\w*subjects|s)\.([a-z_]+)\b", code_of(service))
    names = sorted({name for name in found if hasattr(Subjects, name)})
    readme = readme_of(service)
    missing = [name for name in names if not subject_pattern(name).search(readme)]
    assert missing == [], (f"services/{service}/README.md does not name the subjects of "
                           f"{missing} (write them as `<ns>.x.<token>`, `<NS>_STREAM`)")


@pytest.mark.parametrize("service", SERVICES)
def test_every_route_the_code_names_is_in_the_readme(service: str) -> None:
    paths = set(re.findall(r'@(?:get|post|put|patch|delete)\(\s*"([^"]+)"', code_of(service)))
    readme = readme_of(service)
    # `{name:str}` in code is `{name}` in prose.
    missing = sorted(p for p in paths if re.sub(r"\{(\w+):\w+\}", r"{\1}", p) not in readme)
    assert missing == [], f"services/{service}/README.md does not name the routes {missing}"


def test_the_checks_see_what_they_check() -> None:
    assert {"billing", "metering", "router", "launcher"} <= set(SERVICES)
    assert subject_pattern("usage").search("`<ns>.usage.gpu.<pop>`")
    assert not subject_pattern("usage").search("`<ns>.usage.cpu.<pop>`")
    assert subject_pattern("usage_stream").search("`<NS>_USAGE`")
