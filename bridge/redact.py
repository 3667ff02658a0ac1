"""Keep secrets (webhook secrets, tokens, chat webhook URLs) out of logs and errors."""

from __future__ import annotations

import re
from urllib.parse import urlsplit

_MARK = "<redacted>"
# Slack webhook paths and tokens are secrets even when the config did not mark them.
_PATTERNS = re.compile(
    r"https://hooks\.slack\.com/\S+|xox[abposr]-[A-Za-z0-9-]+|https?://[^\s\"'<>]*/api/webhooks/\S+"
)


class Redactor:
    def __init__(self, secrets: list[str]) -> None:
        self.secrets: list[str] = []
        self.add(secrets)

    def add(self, secrets: list[str]) -> None:
        """Redact these too (a reloaded config may bring new secrets)."""
        known = set(self.secrets) | {s for s in secrets if len(s) >= 4}
        known |= {tail for s in secrets if (tail := _url_tail(s))}
        # Longest first, so a secret that contains another is removed whole.
        self.secrets = sorted(known, key=len, reverse=True)

    def __call__(self, text: str) -> str:
        for secret in self.secrets:
            if secret in text:
                text = text.replace(secret, _MARK)
        return _PATTERNS.sub(_MARK, text)


# Shorter paths ("/hook", "/webhook") hold no secret, and would mangle unrelated lines.
_MIN_SECRET_PATH = 16


def _url_tail(secret: str) -> str | None:
    """A URL's path and query: the secret part of a chat webhook, which servers often echo."""
    if "://" not in secret:
        return None
    try:
        parts = urlsplit(secret)
    except ValueError:
        return None
    tail = parts.path + (f"?{parts.query}" if parts.query else "")
    return tail if len(tail) >= _MIN_SECRET_PATH else None
