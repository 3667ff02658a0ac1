"""Rocket.Chat incoming webhooks: text and attachments; `"success": false` is an error."""

from __future__ import annotations

import time
from typing import Literal

import aiohttp
from pydantic import Field, SecretStr

from bridge.chats.base import Body, ChatType, DestinationSettings, needs_one_of
from bridge.chats.http import Answer, send_json
from bridge.chats.limits import rocketchat_fits
from bridge.outcome import Outcome, from_http


class RocketChatSettings(DestinationSettings):
    type: Literal["rocketchat"]
    url: SecretStr  # https://chat.example.com/hooks/<id>/<token>
    rate_limit: float = Field(default=2.0, ge=0)
    burst: int = Field(default=5, ge=1)


def error_of(answer: Answer) -> str | None:
    data = answer.json()
    if data.get("success") is False:
        return str(data.get("error") or "success: false")
    return None


def retry_after(answer: Answer) -> float | None:
    """Rocket.Chat's rate limiter says when it resets: X-RateLimit-Reset, in Unix milliseconds."""
    try:
        reset = float(answer.headers.get("X-RateLimit-Reset", ""))
    except ValueError:
        return None
    if reset < 1e9:  # not a time but a number of seconds (a proxy's own limiter)
        return reset
    return (reset / 1000 if reset > 1e11 else reset) - time.time()


class RocketChat:
    def __init__(self, settings: RocketChatSettings, session: aiohttp.ClientSession) -> None:
        self.session = session
        self.url = settings.url.get_secret_value()

    async def send(self, body: Body, key: str) -> Outcome:
        answer = await send_json(self.session, self.url, body)
        after = retry_after(answer) if answer.status == 429 else None
        return from_http(
            answer.status, answer.headers, answer.text, retry_after=after, error=error_of(answer)
        )


def check(body: Body) -> str | None:
    return needs_one_of(body, "text", "attachments")


CHAT = ChatType("rocketchat", RocketChatSettings, RocketChat, fits=rocketchat_fits, check=check)
