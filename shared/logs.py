"""Log output: lines for a terminal, or one JSON object per line for a log pipeline
(EDGEINFER_LOG_FORMAT=json: Loki, Elasticsearch, Cloud Logging parse it as it is)."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime

from edgeinfer.shared.config import ConfigError


class JsonFormatter(logging.Formatter):
    def __init__(self, process_label: str) -> None:
        super().__init__()
        self._label = process_label

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "process": self._label,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def configure(level: str, log_format: str, process_label: str) -> None:
    """`log_format`: `text` (the default) or `json`; `process_label` says which process a
    line comes from (under `edgeinfer up` every service logs to one terminal)."""
    handler = logging.StreamHandler()
    if log_format == "json":
        handler.setFormatter(JsonFormatter(process_label))
    elif log_format == "text":
        handler.setFormatter(logging.Formatter(
            f"%(asctime)s %(levelname)s [{process_label}] %(name)s: %(message)s"))
    else:
        raise ConfigError(f"EDGEINFER_LOG_FORMAT = {log_format!r}, must be one of ['text', 'json']")
    logging.basicConfig(level=level, handlers=[handler])
