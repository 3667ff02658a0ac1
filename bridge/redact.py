"""Keep secrets (webhook secrets, tokens, chat webhook URLs) out of logs and errors.

A secret is removed in every form a server may echo it back in: as is, JSON-escaped
(`http:\\/\\/...`), percent-encoded, HTML-escaped, and as a long enough prefix left
where someone cut the text. A header value such as `Bearer X` gives its credential `X`
too, and a URL its path and query and its password.

Everything here runs in time linear in the text: a log line or a page may hold a
megabyte that a stranger chose.
"""

from __future__ import annotations

import base64
import binascii
import html
import json
import re
from urllib.parse import quote, quote_plus, urlsplit

MARK = "<redacted>"  # what a secret is replaced with
_MARK = MARK
# Shorter secrets would mangle unrelated text.
_MIN_SECRET = 4
# Shorter paths ("/hook", "/webhook") hold no secret, and would mangle unrelated lines.
_MIN_SECRET_PATH = 16
# A secret cut short is still redacted down to this many characters of it.
MIN_CUT_PREFIX = 12

# Slack webhook paths and tokens, and URLs with a webhook path (Discord's, and the chats
# that copy it), are secrets even when the config did not mark them. A slash may be
# JSON-escaped or percent-encoded. The webhook URL starts at the last scheme before the
# path, so no character is scanned by more than one attempt: no quadratic backtracking.
_SLASH = r"(?:\\?/|%2[Ff])"
_SCHEME = rf"https?(?::|%3[Aa]){_SLASH}{_SLASH}"
_WEBHOOK_PATH = rf"{_SLASH}api{_SLASH}webhooks{_SLASH}"
_PATTERNS = re.compile(
    rf"https(?::|%3[Aa]){_SLASH}{_SLASH}hooks\.slack\.com{_SLASH}\S+"
    r"|xox[abposr]-[A-Za-z0-9-]+"
    rf"|{_SCHEME}(?:(?!{_SCHEME}|{_WEBHOOK_PATH})[^\s\"'<>])*+{_WEBHOOK_PATH}\S+"
)
_PERCENT_ESCAPE = re.compile(r"%[0-9A-F]{2}")
# "Bearer X", "Basic X", "token X": a scheme word, then the credential.
_CREDENTIAL = re.compile(r"[A-Za-z][A-Za-z0-9_-]*[ \t]+(\S+)")


class Redactor:
    def __init__(self, secrets: list[str]) -> None:
        self.secrets: list[str] = []
        self.add(secrets)

    def add(self, secrets: list[str]) -> None:
        """Redact these too (a reloaded config may bring new secrets)."""
        known = set(self.secrets)
        for secret in secrets:
            for part in _secret_parts(secret):
                known.update(_forms(part))
        # Longest first, so a secret that contains another is removed whole.
        self.secrets = sorted(known, key=len, reverse=True)
        # A secret, or a prefix of one left at a cut, begins with one of these: a text
        # holding none of them (most log lines) holds no secret of the config's. Forms of
        # one secret, and URLs of one host, share theirs.
        self._heads = {secret[:MIN_CUT_PREFIX] for secret in self.secrets}

    def __call__(self, text: str) -> str:
        if not any(head in text for head in self._heads):
            return _PATTERNS.sub(_MARK, text)
        return self.every_secret(text)

    def every_secret(self, text: str) -> str:
        """Redact, looking for each secret in turn (what `__call__` does when needed)."""
        for secret in self.secrets:
            if secret in text:
                text = text.replace(secret, _MARK)
        text = _redact_cut_prefixes(text, self.secrets)
        return _PATTERNS.sub(_MARK, text)


def _secret_parts(secret: str) -> set[str]:
    """The secret, and the parts of it that are secrets on their own."""
    parts = {secret}
    if match := _CREDENTIAL.fullmatch(secret.strip()):
        credential = match.group(1)
        parts.add(credential)
        parts |= _basic_credentials(credential)
    parts |= _url_parts(secret)
    return {part for part in parts if len(part) >= _MIN_SECRET}


def _basic_credentials(credential: str) -> set[str]:
    """`user:password` and the password, when the credential is Basic's base64 of them."""
    try:
        decoded = base64.b64decode(credential, validate=True).decode()
    except (binascii.Error, ValueError):
        return set()
    _, colon, password = decoded.partition(":")
    return {decoded, password} if colon and decoded.isprintable() else set()


def _url_parts(secret: str) -> set[str]:
    """A URL's path and query (the secret part of a chat webhook, which servers often
    echo) and its password."""
    if "://" not in secret:
        return set()
    try:
        parts = urlsplit(secret)
        password = parts.password
    except ValueError:
        return set()
    found = {password} if password else set()
    tail = parts.path + (f"?{parts.query}" if parts.query else "")
    if len(tail) >= _MIN_SECRET_PATH:
        found.add(tail)
    return found


def _forms(secret: str) -> set[str]:
    """The ways a server may write the secret back: as is, JSON, URL or HTML escaped."""
    escaped = {
        json.dumps(secret)[1:-1],
        json.dumps(secret, ensure_ascii=False)[1:-1],
    }
    escaped |= {form.replace("/", "\\/") for form in escaped}
    encoded = {quote(secret), quote(secret, safe=""), quote_plus(secret), quote_plus(secret, "/")}
    encoded |= {_PERCENT_ESCAPE.sub(lambda m: m.group().lower(), form) for form in encoded}
    return {secret, html.escape(secret), *escaped, *encoded}


def _redact_cut_prefixes(text: str, secrets: list[str]) -> str:
    """Redact what is left of a secret cut short: a prefix of at least MIN_CUT_PREFIX
    characters just before a cut mark or the end of the text."""
    spans: list[tuple[int, int]] = []
    for secret in secrets:
        if len(secret) <= MIN_CUT_PREFIX:
            continue
        head = secret[:MIN_CUT_PREFIX]
        start = text.find(head)
        while start >= 0:
            end = _cut(text, start, start + _common_prefix(text, start, secret))
            if end is not None:
                spans.append((start, end))
            start = text.find(head, start + 1)
    if not spans:
        return text
    pieces: list[str] = []
    done = 0
    for start, end in sorted(spans):
        if start >= done:
            pieces += [text[done:start], _MARK]
        done = max(done, end)
    return "".join(pieces) + text[done:]


def _cut(text: str, start: int, end: int) -> int | None:
    """Where the text is cut, if it is, right after the secret's prefix text[start:end]:
    at its end, or at a cut mark (three dots may begin inside the prefix, as in
    `https://chat...` for `https://chat.example.com/...`)."""
    if end == len(text) or text.startswith("…", end):
        return end
    dots = text.find("...", max(start + MIN_CUT_PREFIX, end - 2), end + 3)
    return dots if dots >= 0 else None


def _common_prefix(text: str, start: int, secret: str) -> int:
    """How many of the secret's first characters the text holds at `start`
    (at least MIN_CUT_PREFIX, known), found by halving: a few C-speed comparisons."""
    low, high = MIN_CUT_PREFIX, len(secret)
    while low < high:
        middle = (low + high + 1) // 2
        if text.startswith(secret[:middle], start):
            low = middle
        else:
            high = middle - 1
    return low
