"""Google Chat, through a space's incoming webhook: a card (cardsV2) with a text fallback."""

from __future__ import annotations

from typing import Literal

import aiohttp
from pydantic import Field, SecretStr

from bridge.chats.base import Body, ChatType, DestinationSettings, needs_one_of
from bridge.chats.http import send_json
from bridge.chats.limits import googlechat_fits
from bridge.outcome import Outcome, from_http


class GoogleChatSettings(DestinationSettings):
    type: Literal["googlechat"]
    url: SecretStr  # https://chat.googleapis.com/v1/spaces/.../messages?key=...&token=...
    # Google Chat takes about one message a second per space.
    rate_limit: float = Field(default=1.0, ge=0)
    burst: int = Field(default=1, ge=1)


class GoogleChat:
    def __init__(self, settings: GoogleChatSettings, session: aiohttp.ClientSession) -> None:
        self.session = session
        self.url = settings.url.get_secret_value()

    async def send(self, body: Body, key: str) -> Outcome:
        answer = await send_json(self.session, self.url, body)
        return from_http(answer.status, answer.headers, answer.text)


def check(body: Body) -> str | None:
    return needs_one_of(body, "text", "cardsV2")


CHAT = ChatType("googlechat", GoogleChatSettings, GoogleChat, fits=googlechat_fits, check=check)
