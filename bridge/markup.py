"""Escaping for the markup chats read: Markdown (Discord, Mattermost, Rocket.Chat) and HTML.

Templates use these on whatever a build carries (run names, triggers, reasons), so
that a `*` or a `<` in a name shows as itself instead of formatting the message, and
an `@here` or a `<!channel>` in it mentions no one. `clean` takes out of build data
what no chat should show: terminal escapes, control and bidi characters.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import quote

# Characters that start Markdown formatting, links or mentions mid-line. An underscore
# between letters or digits (build_amd64) formats nothing, so it is kept as is.
# `\@all` mentions no one in Rocket.Chat (a mention starts after a space or a line start).
_MARKDOWN_SPECIAL = re.compile(r"([\\`*~|\[\]()<>@]|(?<![^\W_])_|_(?![^\W_]))")
# An @ that could begin a mention (@channel, @alice.b: not inside a word, as in an e-mail
# address), or a < that could begin one in angle brackets: Slack's <!here> and <@U123>,
# Discord's <@123>, Google Chat's <users/all>, Teams' <at>.
_MENTION_START = re.compile(r"((?<!\w)@|<)(?=[\w.!#&@/-])")
# In a Markdown link's destination these would end it or break it; an @ in it could be
# read as a mention (Mattermost finds `/@channel` in a URL).
_URL_IN_MARKDOWN = str.maketrans(
    {"(": "%28", ")": "%29", " ": "%20", "<": "%3C", ">": "%3E", "@": "%40"}
)
# Terminal escape sequences: CSI (colours, cursor moves, 7-bit and 8-bit), OSC (titles,
# OSC-8 links; ended by BEL or ST, or at the line's end) and the other two-character ones.
_TERMINAL_ESCAPE = re.compile(
    r"(?:\x1b\[|\x9b)[0-?]*[ -/]*[@-~]"
    r"|(?:\x1b\]|\x9d)[^\x07\x1b\x9c\n]*(?:\x07|\x1b\\|\x9c)?"
    r"|\x1b[ -/]*[0-~]"
)
# C0 and C1 controls, DEL, and the bidi embeddings, overrides and isolates (which can
# make text read in another order than it is written: U+202A-E, U+2066-9).
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")
# Line breaks, which a multi-line field keeps as newlines.
_LINE_BREAK = re.compile(r"\r\n?|[\n\x0b\x0c\x85\u2028\u2029]")


def markdown(text: Any) -> str:
    """Backslash-escape the characters Markdown would read as formatting."""
    return _MARKDOWN_SPECIAL.sub(r"\\\1", str(text))


def unmention(text: Any) -> str:
    """Put a word joiner (U+2060, invisible) after each @ or < that could begin a mention.

    Mattermost finds mentions in a post's words whatever their escaping (`\\@channel`
    still notifies the channel), so build data must not hold `@name` at all; the same
    goes for `<users/all>` in Google Chat's plain texts, `<!here>` in Slack's.
    """
    return _MENTION_START.sub("\\1\u2060", str(text))


def safe_url(url: Any) -> str:
    """`url` with its @ percent-encoded, so that a chat reading mentions in a message's
    words (`https://ci.example/@channel`) finds none in it."""
    return str(url).replace("@", "%40")


def markdown_link(url: Any, text: Any) -> str:
    """`[text](url)`, the text escaped and the URL kept in one piece."""
    return f"[{markdown(text)}]({str(url).translate(_URL_IN_MARKDOWN)})"


def html(text: Any) -> str:
    """Escape `&`, `<` and `>`: safe text for HTML (Matrix) and Google Chat's markup."""
    return str(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def html_link(url: Any, text: Any) -> str:
    """`<a href="url">text</a>`, both escaped."""
    href = html(url).replace('"', "%22")
    return f'<a href="{href}">{html(text)}</a>'


def clean(text: str, multiline: bool = False) -> str:
    """`text` without terminal escapes, control characters (C0, C1, DEL) or bidi controls.

    A multi-line text keeps its line breaks, as newlines; any other text gets a space
    for each, so that a run name cannot start a new line (a quote, a list) in a chat.
    """
    if text.isprintable():
        return text  # the common case: every character taken out below is unprintable
    text = _TERMINAL_ESCAPE.sub("", text)
    text = _LINE_BREAK.sub("\n" if multiline else " ", text)
    text = text.replace("\t", " ")
    if multiline:
        return "\n".join(_CONTROL.sub("", line) for line in text.split("\n"))
    return _CONTROL.sub("", text)


_NESTED = (dict, list, tuple, str)


def clean_data(value: Any, multiline: frozenset[str] = frozenset(), key: str = "") -> Any:
    """`value` (JSON-like data) with every string `clean`ed; the strings under a key in
    `multiline` keep their line breaks."""
    # Every build's facts are hundreds of values: the plain ones are handled inline, not
    # with a call each.
    if isinstance(value, str):
        return clean(value, key in multiline)
    if isinstance(value, dict):
        cleaned = {}
        for k, item in value.items():
            name = str(k)
            if type(item) is str and item.isprintable():
                pass
            elif isinstance(item, _NESTED):
                item = clean_data(item, multiline, name)
            cleaned[clean(name)] = item
        return cleaned
    if isinstance(value, list | tuple):
        return [
            clean_data(item, multiline, key) if isinstance(item, _NESTED) else item
            for item in value
        ]
    return value


def plain_json(text: bytes) -> bool:
    """Whether every string of this JSON text is printable ASCII, so that `clean` leaves
    each as it is: no escape in it (a control character must be one), no byte outside
    ASCII, no DEL. JobServ's own bodies are so, unless a field holds a line break."""
    return text.isascii() and b"\\" not in text and b"\x7f" not in text


# What a URL may hold as it is: reserved characters, and escapes already made.
_URL_SAFE = ":/?#[]@!$&'()*+,;=%~"
# A URL that `quote` leaves as it is (most are): letters, digits, `_.-` and the above.
_URL_QUOTED = re.compile(r"[A-Za-z0-9_.\-:/?#\[\]@!$&'()*+,;=%~]*")


def quote_url(url: str) -> str:
    """`url` with spaces and non-ASCII characters percent-encoded (JobServ builds a run's
    web link without quoting its name), escapes already in it kept as they are."""
    return url if _URL_QUOTED.fullmatch(url) else quote(url, safe=_URL_SAFE)
