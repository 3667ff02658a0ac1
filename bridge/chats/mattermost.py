"""Mattermost incoming webhooks (Slack-compatible): Markdown text and attachments."""

from __future__ import annotations

from typing import Any, Literal

import aiohttp
from pydantic import Field, SecretStr

from bridge.chats.base import Body, ChatType, DestinationSettings, needs_one_of
from bridge.chats.http import send_json
from bridge.chats.limits import mattermost_fits
from bridge.outcome import Outcome, from_http


class MattermostSettings(DestinationSettings):
    type: Literal["mattermost"]
    url: SecretStr  # https://mattermost.example.com/hooks/<key>
    # Override the webhook's own channel, user name and icon (if the server allows it).
    channel: str | None = None
    username: str | None = None
    icon_url: str | None = None
    rate_limit: float = Field(default=5.0, ge=0)
    burst: int = Field(default=10, ge=1)


class Mattermost:
    def __init__(self, settings: MattermostSettings, session: aiohttp.ClientSession) -> None:
        self.session = session
        self.url = settings.url.get_secret_value()
        self.settings = settings

    async def send(self, body: Body, key: str) -> Outcome:
        payload = prepare(self.settings, body)
        answer = await send_json(self.session, self.url, payload)
        return from_http(answer.status, answer.headers, answer.text)


def prepare(settings: MattermostSettings, body: Body) -> dict[str, Any]:
    """The body, with the destination's channel, user name and icon unless the body sets them."""
    overrides = {
        key: value
        for key, value in (
            ("channel", settings.channel),
            ("username", settings.username),
            ("icon_url", settings.icon_url),
        )
        if value
    }
    return {**overrides, **body} if isinstance(body, dict) else {"text": body}


def check(body: Body) -> str | None:
    return needs_one_of(body, "text", "attachments")


CHAT = ChatType(
    "mattermost", MattermostSettings, Mattermost, fits=mattermost_fits, prepare=prepare, check=check
)
