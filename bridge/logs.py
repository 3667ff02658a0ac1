"""Log lines, human or JSON, with every secret redacted, whoever logs them."""

from __future__ import annotations

import json
import logging
import sys
from typing import Literal

from bridge.redact import Redactor

# Structured fields our log calls pass in `extra=`; JSON lines carry them as keys.
FIELDS = (
    "event_id",
    "delivery_id",
    "factory",
    "trigger",
    "build",
    "status",
    "destination",
    "outcome",
    "reason",
    "attempt",
    "source",
)


class HumanFormatter(logging.Formatter):
    def __init__(self, redact: Redactor) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")
        self.redact = redact

    def format(self, record: logging.LogRecord) -> str:
        return self.redact(super().format(record))


class JsonFormatter(logging.Formatter):
    def __init__(self, redact: Redactor) -> None:
        super().__init__()
        self.redact = redact

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, object] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        line.update({k: getattr(record, k) for k in FIELDS if hasattr(record, k)})
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        # Redact before encoding too: JSON escapes would hide a secret with quotes in it.
        line = {k: self.redact(v) if isinstance(v, str) else v for k, v in line.items()}
        return self.redact(json.dumps(line, default=str, ensure_ascii=False))


def configure(level: str, style: Literal["human", "json"], redact: Redactor) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(redact) if style == "json" else HumanFormatter(redact))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
