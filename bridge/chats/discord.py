"""Discord webhooks: embeds, sent with `?wait=true` so that errors come back."""

from __future__ import annotations

from typing import Any, Literal

import aiohttp
from pydantic import Field, SecretStr
from yarl import URL

from bridge.chats.base import Body, ChatType, DestinationSettings, needs_one_of
from bridge.chats.http import Answer, send_json
from bridge.chats.limits import discord_fits
from bridge.outcome import Outcome, from_http, parse_retry_after


class DiscordSettings(DestinationSettings):
    type: Literal["discord"]
    url: SecretStr  # https://discord.com/api/webhooks/<id>/<token>
    username: str | None = None
    avatar_url: str | None = None
    # Discord allows about 5 requests in 2 seconds per webhook.
    rate_limit: float = Field(default=2.0, ge=0)
    burst: int = Field(default=5, ge=1)


def retry_after(answer: Answer) -> float | None:
    """Discord's own signal: `retry_after` (seconds) in the body, else its reset header."""
    seconds: Any = answer.json().get("retry_after")
    if isinstance(seconds, int | float) and not isinstance(seconds, bool):
        return float(seconds)
    return parse_retry_after(answer.headers.get("X-RateLimit-Reset-After"))


class Discord:
    def __init__(self, settings: DiscordSettings, session: aiohttp.ClientSession) -> None:
        self.session = session
        self.url = URL(settings.url.get_secret_value()).update_query(wait="true")
        self.settings = settings

    async def send(self, body: Body, key: str) -> Outcome:
        payload = prepare(self.settings, body)
        answer = await send_json(self.session, self.url, payload)
        after = retry_after(answer) if answer.status == 429 else None
        return from_http(answer.status, answer.headers, answer.text, retry_after=after)


def prepare(settings: DiscordSettings, body: Body) -> dict[str, Any]:
    """The body, with the destination's user name and avatar unless the body sets them."""
    identity = {
        key: value
        for key, value in (("username", settings.username), ("avatar_url", settings.avatar_url))
        if value
    }
    return {**identity, **body} if isinstance(body, dict) else {"content": body}


def check(body: Body) -> str | None:
    return needs_one_of(body, "content", "embeds")


CHAT = ChatType(
    "discord", DiscordSettings, Discord, fits=discord_fits, prepare=prepare, check=check
)
