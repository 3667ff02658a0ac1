"""Keep secrets (webhook secrets, tokens, chat webhook URLs) out of logs and errors."""

from __future__ import annotations

import logging
import re

_MARK = "<redacted>"
# Slack webhook paths and tokens are secrets even when the config did not mark them.
_PATTERNS = re.compile(
    r"https://hooks\.slack\.com/\S+|xox[abposr]-[A-Za-z0-9-]+|https?://[^\s\"'<>]*/api/webhooks/\S+"
)


class Redactor:
    def __init__(self, secrets: list[str]) -> None:
        # Longest first, so a secret that contains another is removed whole.
        self.secrets = sorted({s for s in secrets if len(s) >= 4}, key=len, reverse=True)

    def __call__(self, text: str) -> str:
        for secret in self.secrets:
            if secret in text:
                text = text.replace(secret, _MARK)
        return _PATTERNS.sub(_MARK, text)


class RedactingFilter(logging.Filter):
    """Rewrites every record, exceptions from libraries included, before it is written."""

    def __init__(self, redact: Redactor) -> None:
        super().__init__()
        self.redact = redact

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        record.msg = self.redact(message)
        record.args = None
        if record.exc_text:
            record.exc_text = self.redact(record.exc_text)
        return True


def install(redact: Redactor) -> None:
    """Redact every log record of the process, whoever logs it."""
    for handler in logging.getLogger().handlers:
        handler.addFilter(RedactingFilter(redact))
