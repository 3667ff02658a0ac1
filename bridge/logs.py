"""Log lines, human or JSON, with every secret redacted, whoever logs them.

One record is one line: control characters in a message are escaped, so a build
field holding a line break or a terminal escape cannot forge or hide a line.
"""

from __future__ import annotations

import json
import logging
import sys
import time
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
    "digest",
)


# A message longer than this is cut (after redaction): a log line is read, not stored.
MAX_MESSAGE = 8000
# A build's field (factory, trigger, status) is logged cut to this many characters.
FIELD_LIMIT = 200
# Line breaks and controls of C0 and C1 (ESC starts terminal escapes), DEL, and the
# Unicode line and paragraph separators, which some readers take for line breaks.
_CONTROLS = [*range(0x20), *range(0x7F, 0xA0), 0x2028, 0x2029]
_ESCAPED_CONTROLS = str.maketrans({code: repr(chr(code))[1:-1] for code in _CONTROLS})
# JSON escapes C0 controls itself; json.dumps(ensure_ascii=False) leaves these as they are.
_JSON_ESCAPED = str.maketrans({code: f"\\u{code:04x}" for code in _CONTROLS if code >= 0x7F})


def one_line(text: str) -> str:
    """The text with its control characters escaped (a newline becomes `\\n`)."""
    # Every character escaped is one str.isprintable refuses; most lines have none.
    return text if text.isprintable() else text.translate(_ESCAPED_CONTROLS)


def bounded(text: str, limit: int = MAX_MESSAGE) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


class Clock:
    """A record's time to the second, as `layout` (strftime) writes it in local time: made
    once a second, as strftime is a good part of formatting a line, and every delivery
    writes one. Called under the handler's lock."""

    def __init__(self, layout: str) -> None:
        self.layout = layout
        self.second: int | None = None
        self.text = ""

    def __call__(self, record: logging.LogRecord) -> str:
        second = int(record.created)
        if second != self.second:
            self.second, self.text = second, time.strftime(self.layout, time.localtime(second))
        return self.text


class HumanFormatter(logging.Formatter):
    """`time LEVEL logger: message`, then any traceback. Only the message and the
    traceback can hold a secret; the message is redacted before it is escaped and cut,
    which could split one."""

    def __init__(self, redact: Redactor) -> None:
        super().__init__()
        self.redact = redact
        self.clock = Clock(self.default_time_format)

    def format(self, record: logging.LogRecord) -> str:
        message = one_line(bounded(self.redact(record.getMessage())))
        when = f"{self.clock(record)},{int(record.msecs):03d}"  # as Formatter.formatTime
        line = f"{when} {record.levelname} {record.name}: {message}"
        if record.exc_info:
            line += "\n" + self.redact(self.formatException(record.exc_info))
        if record.stack_info:
            line += "\n" + self.redact(self.formatStack(record.stack_info))
        return line


class JsonFormatter(logging.Formatter):
    def __init__(self, redact: Redactor) -> None:
        super().__init__()
        self.redact = redact
        self.clock = Clock("%Y-%m-%dT%H:%M:%S")

    def format(self, record: logging.LogRecord) -> str:
        given = record.__dict__
        line: dict[str, object] = {
            "time": f"{self.clock(record)}.{int(record.msecs):03d}",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": self._value("message", record.getMessage()),
        }
        for key in FIELDS:
            if key in given:
                line[key] = self._value(key, given[key])
        if record.exc_info:
            line["exception"] = self._value("exception", self.formatException(record.exc_info))
        # Redact before encoding too: JSON escapes would hide a secret with quotes in it.
        text = self.redact(_JSON_ENCODER.encode(line))
        return text if text.isprintable() else text.translate(_JSON_ESCAPED)

    def _value(self, key: str, value: object) -> object:
        if not isinstance(value, str):
            return value
        value = self.redact(value)
        return value if key == "exception" else bounded(value)


# Made once: json.dumps with options makes an encoder per call, and every line is encoded.
_JSON_ENCODER = json.JSONEncoder(default=str, ensure_ascii=False)


def configure(level: str, style: Literal["human", "json"], redact: Redactor) -> None:
    # A line shows none of the caller's file, thread or process: not finding them makes a
    # record about a third cheaper (the logging HOWTO's "Optimization"), and every delivery
    # logs one.
    logging._srcfile = None
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(redact) if style == "json" else HumanFormatter(redact))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
