"""Files that hold secrets: only their owner may read them (0600), and a reader never sees
one half-written."""

from __future__ import annotations

import os
import secrets
from pathlib import Path


def write_private(path: Path, text: str) -> None:
    """Write `text` to `path` with mode 0600, atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        os.fchmod(out.fileno(), 0o600)  # also when the file was there with a wider mode
        out.write(text)
    tmp.replace(path)


def load_or_create_secret(path: Path, prefix: str = "adm_") -> str:
    """The secret kept at `path`, or a new random one saved there."""
    if path.exists():
        return path.read_text().strip()
    token = prefix + secrets.token_urlsafe(24)
    write_private(path, token)
    return token
