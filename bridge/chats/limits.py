"""Size limits shared by chats: each chat's `fits` says what, if anything, is over."""

from __future__ import annotations

import json
from collections import OrderedDict
from typing import Any

from bridge.chats.base import Body, needs_one_of

# Bodies encoded lately, by identity: one rendered message goes to every destination of its
# template, and is measured against a chat's limits before it is sent; each encodes it once.
# A body is never changed once rendered. Kept with the body, so that its id is not reused
# while kept; a large body is encoded again rather than kept.
ENCODINGS_KEPT = 32
ENCODING_KEPT_MAX = 64 * 1024
_encodings: OrderedDict[int, tuple[Body, bytes]] = OrderedDict()


def encode_json(body: Body) -> bytes:
    """The bytes a JSON chat is sent: compact UTF-8, so a byte limit is measured on them."""
    kept = _encodings.get(id(body))
    if kept is not None:
        return kept[1]
    encoded = json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()
    if len(encoded) <= ENCODING_KEPT_MAX:
        _encodings[id(body)] = (body, encoded)
        if len(_encodings) > ENCODINGS_KEPT:
            _encodings.popitem(last=False)
    return encoded


def json_bytes(body: Body) -> int:
    return len(encode_json(body))


def within_bytes(body: Body, limit: int) -> str | None:
    try:
        size = json_bytes(body)
    except (ValueError, TypeError, RecursionError) as exc:  # not a JSON document we can send
        return f"cannot be measured as JSON ({type(exc).__name__})"
    return f"{size} bytes of JSON (limit {limit})" if size > limit else None


def over_length(value: Any, limit: int, what: str) -> str | None:
    if isinstance(value, str) and len(value) > limit:
        return f"{what} has {len(value)} characters (limit {limit})"
    return None


def slack_fits(body: Body) -> str | None:
    """Slack: 50 blocks, 3000 characters a section, 150 a header, about 40k of text.

    Like every `fits`, total: any JSON value in, a problem or None out (what is not a
    list or an object where one is expected is Slack's to refuse, not ours to trip on)."""
    if not isinstance(body, dict):
        return None
    blocks = _list(body.get("blocks"))
    if len(blocks) > 50:
        return f"{len(blocks)} blocks (limit 50)"
    for index, block in enumerate(map(_mapping, blocks)):
        text = _mapping(block.get("text")).get("text")
        limit = 150 if block.get("type") == "header" else 3000
        if problem := over_length(text, limit, f"blocks[{index}]"):
            return problem
        for element in map(_mapping, _list(block.get("elements"))):
            if problem := over_length(element.get("text"), 3000, f"blocks[{index}] element"):
                return problem
    return over_length(body.get("text"), 40000, "text")


def slack_check(body: Body) -> str | None:
    """Slack shows a message with `text` or `blocks`."""
    return needs_one_of(body, "text", "blocks")


def over_total(texts: list[Any], limit: int, what: str) -> str | None:
    total = sum(len(text) for text in texts if isinstance(text, str))
    return f"{what} have {total} characters together (limit {limit})" if total > limit else None


def first_problem(*problems: str | None) -> str | None:
    return next((problem for problem in problems if problem is not None), None)


def _mapping(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


TEAMS_MAX_BYTES = 28_000


def teams_fits(body: Body) -> str | None:
    """Teams Workflows: about 28 KB for the whole message, card included."""
    return within_bytes(body, TEAMS_MAX_BYTES)


def discord_fits(body: Body) -> str | None:
    """Discord: 2000 characters of content, 10 embeds, each with a title of 256, a
    description of 4096, 25 fields (name 256, value 1024), a footer of 2048, and
    6000 characters over all the embeds' texts."""
    if not isinstance(body, dict):
        return None
    if problem := over_length(body.get("content"), 2000, "content"):
        return problem
    embeds = _list(body.get("embeds"))
    if len(embeds) > 10:
        return f"{len(embeds)} embeds (limit 10)"
    counted: list[Any] = []
    for index, embed in enumerate(map(_mapping, embeds)):
        fields = _list(embed.get("fields"))
        if len(fields) > 25:
            return f"embeds[{index}] has {len(fields)} fields (limit 25)"
        texts = [
            (embed.get("title"), 256, "title"),
            (embed.get("description"), 4096, "description"),
            (_mapping(embed.get("footer")).get("text"), 2048, "footer.text"),
            (_mapping(embed.get("author")).get("name"), 256, "author.name"),
        ]
        for number, field in enumerate(map(_mapping, fields)):
            texts += [
                (field.get("name"), 256, f"fields[{number}].name"),
                (field.get("value"), 1024, f"fields[{number}].value"),
            ]
        for text, limit, what in texts:
            if problem := over_length(text, limit, f"embeds[{index}].{what}"):
                return problem
            counted.append(text)
    return over_total(counted, 6000, "the embeds")


GOOGLE_CHAT_MAX_BYTES = 32_000


def googlechat_fits(body: Body) -> str | None:
    """Google Chat: 32,000 bytes a message, 100 widgets a card (more are dropped)."""
    if not isinstance(body, dict):
        return None
    for index, item in enumerate(map(_mapping, _list(body.get("cardsV2")))):
        sections = _list(_mapping(item.get("card")).get("sections"))
        widgets = sum(len(_list(_mapping(section).get("widgets"))) for section in sections)
        if widgets > 100:
            return f"cardsV2[{index}] has {widgets} widgets (limit 100)"
    return within_bytes(body, GOOGLE_CHAT_MAX_BYTES)


def _attachment_texts(body: dict[str, Any]) -> list[Any]:
    texts: list[Any] = []
    for attachment in map(_mapping, _list(body.get("attachments"))):
        texts += [attachment.get(key) for key in ("pretext", "title", "text", "fallback")]
        for field in map(_mapping, _list(attachment.get("fields"))):
            texts += [field.get("title"), field.get("value")]
    return texts


MATTERMOST_MAX_CHARACTERS = 16_383


def mattermost_fits(body: Body) -> str | None:
    """Mattermost: a post of 16383 characters; its attachments are held to the same."""
    if not isinstance(body, dict):
        return None
    return first_problem(
        over_length(body.get("text"), MATTERMOST_MAX_CHARACTERS, "text"),
        over_total(_attachment_texts(body), MATTERMOST_MAX_CHARACTERS, "the attachments"),
    )


ROCKET_CHAT_MAX_CHARACTERS = 5_000


def rocketchat_fits(body: Body) -> str | None:
    """Rocket.Chat: 5000 characters a message (Message_MaxAllowedSize's default);
    its attachments are held to the same."""
    if not isinstance(body, dict):
        return None
    return first_problem(
        over_length(body.get("text"), ROCKET_CHAT_MAX_CHARACTERS, "text"),
        over_total(_attachment_texts(body), ROCKET_CHAT_MAX_CHARACTERS, "the attachments"),
    )


# Matrix: 65536 bytes an event, envelope and signatures included; the rest is for them.
MATRIX_MAX_CONTENT_BYTES = 60_000


def matrix_fits(body: Body) -> str | None:
    """Matrix: an event of at most 64 KiB, of which the content gets 60,000 bytes."""
    return within_bytes(body, MATRIX_MAX_CONTENT_BYTES)
