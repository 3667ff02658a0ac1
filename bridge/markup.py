"""Escaping for the markup chats read: Markdown (Discord, Mattermost, Rocket.Chat) and HTML.

Templates use these on whatever a build carries (run names, triggers, reasons), so
that a `*` or a `<` in a name shows as itself instead of formatting the message.
"""

from __future__ import annotations

import re
from typing import Any

# Characters that start Markdown formatting, links or mentions mid-line. An underscore
# between letters or digits (build_amd64) formats nothing, so it is kept as is.
# `\@all` mentions no one in Rocket.Chat (a mention starts after a space or a line start).
_MARKDOWN_SPECIAL = re.compile(r"([\\`*~|\[\]()<>@]|(?<![^\W_])_|_(?![^\W_]))")
# An @ that could begin a mention (@channel, @alice.b).
_MENTION_START = re.compile(r"@(?=[\w.-])")
# In a Markdown link's destination these would end it or break it.
_URL_IN_MARKDOWN = str.maketrans({"(": "%28", ")": "%29", " ": "%20", "<": "%3C", ">": "%3E"})


def markdown(text: Any) -> str:
    """Backslash-escape the characters Markdown would read as formatting."""
    return _MARKDOWN_SPECIAL.sub(r"\\\1", str(text))


def unmention(text: Any) -> str:
    """Put a word joiner (U+2060, invisible) after each @ that could begin a mention.

    Mattermost finds mentions in a post's words whatever their escaping (`\\@channel`
    still notifies the channel), so build data must not hold `@name` at all.
    """
    return _MENTION_START.sub("@\u2060", str(text))


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
