"""Microsoft Teams, through a Workflows webhook: an Adaptive Card (1.4) in `attachments`."""

from __future__ import annotations

from typing import Any, Literal

import aiohttp
from pydantic import Field, SecretStr

from bridge.chats.base import Body, ChatType, DestinationSettings
from bridge.chats.http import send_json
from bridge.chats.limits import teams_fits
from bridge.outcome import Outcome, from_http


class TeamsSettings(DestinationSettings):
    type: Literal["teams"]
    url: SecretStr  # the workflow's "When a Teams webhook request is received" URL
    rate_limit: float = Field(default=1.0, ge=0)
    burst: int = Field(default=2, ge=1)


class Teams:
    def __init__(self, settings: TeamsSettings, session: aiohttp.ClientSession) -> None:
        self.session = session
        self.url = settings.url.get_secret_value()

    async def send(self, body: Body, key: str) -> Outcome:
        # A workflow answers 202 Accepted when it has taken the message.
        answer = await send_json(self.session, self.url, body)
        return from_http(answer.status, answer.headers, answer.text)


ADAPTIVE_CARD = "application/vnd.microsoft.card.adaptive"


def check(body: Body) -> str | None:
    """A workflow posts the Adaptive Cards in `attachments`."""
    attachments: Any = body.get("attachments") if isinstance(body, dict) else None
    if not isinstance(attachments, list) or not any(
        isinstance(a, dict) and a.get("contentType") == ADAPTIVE_CARD and a.get("content")
        for a in attachments
    ):
        return f"needs `attachments` with an Adaptive Card ({ADAPTIVE_CARD})"
    return None


CHAT = ChatType("teams", TeamsSettings, Teams, fits=teams_fits, check=check)
