"""Log lines, human or JSON, with every secret redacted, whoever logs them.

One record is one line: control characters in a message are escaped, so a build
field holding a line break or a terminal escape cannot forge or hide a line.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sys
import time
from typing import Literal, TextIO

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


# Lines logged on the event loop's thread wait this long at most, or until this many
# characters wait, to be written together.
WRITE_EVERY = 0.1
WRITE_AT = 64 * 1024


class BatchedWriter(logging.StreamHandler[TextIO]):
    """Lines logged on the event loop's thread are written together, WRITE_EVERY seconds
    after the first of them: a write per line let the GIL go, to the store's threads and
    back, for every webhook and delivery, which cost the intake a seventh of its CPU. A
    warning or worse, a line from any other thread, and a flush (exit) write at once, after
    the lines waiting; a process killed outright loses at most WRITE_EVERY of info lines."""

    def __init__(self, stream: TextIO) -> None:
        super().__init__(stream)
        self._waiting: list[str] = []
        self._size = 0
        self._timer_on: asyncio.AbstractEventLoop | None = None  # the loop that will write

    def emit(self, record: logging.LogRecord) -> None:  # called under the handler's lock
        try:
            line = self.format(record)
            self._waiting.append(line)
            self._size += len(line)
            loop = asyncio._get_running_loop()
            if loop is None or record.levelno >= logging.WARNING or self._size >= WRITE_AT:
                self.flush()
            elif self._timer_on is not loop:
                self._timer_on = loop
                loop.call_later(WRITE_EVERY, self._write_waiting)
        except RecursionError:
            raise
        except Exception:
            self.handleError(record)

    def _write_waiting(self) -> None:
        self._timer_on = None
        with contextlib.suppress(Exception):  # stderr itself failed: nowhere left to say so
            self.flush()

    def flush(self) -> None:
        with self.lock:  # type: ignore[union-attr]  # made in Handler.__init__
            if self._waiting:
                lines, self._waiting, self._size = self._waiting, [], 0
                self.stream.write(self.terminator.join(lines) + self.terminator)
            super().flush()


def configure(level: str, style: Literal["human", "json"], redact: Redactor) -> None:
    # A line shows none of the caller's file, thread or process: not finding them makes a
    # record about a third cheaper (the logging HOWTO's "Optimization"), and every delivery
    # logs one.
    logging._srcfile = None
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    handler = BatchedWriter(sys.stderr)
    handler.setFormatter(JsonFormatter(redact) if style == "json" else HumanFormatter(redact))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
