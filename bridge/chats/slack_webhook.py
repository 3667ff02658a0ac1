"""Slack incoming webhooks, through slack-sdk's AsyncWebhookClient."""

from __future__ import annotations

from typing import Literal

import aiohttp
from pydantic import SecretStr
from slack_sdk.webhook.async_client import AsyncWebhookClient

from bridge.chats.base import Body, ChatType, DestinationSettings
from bridge.chats.limits import slack_fits
from bridge.outcome import Outcome, from_http


class SlackWebhookSettings(DestinationSettings):
    type: Literal["slack-webhook"]
    url: SecretStr


class SlackWebhook:
    def __init__(self, settings: SlackWebhookSettings, session: aiohttp.ClientSession) -> None:
        # Retries are decided in one place (bridge.outcome), never inside the client.
        self.client = AsyncWebhookClient(
            url=settings.url.get_secret_value(), session=session, retry_handlers=[]
        )

    async def send(self, body: Body, delivery_id: int) -> Outcome:
        payload = body if isinstance(body, dict) else {"text": body}
        response = await self.client.send_dict(payload)
        return from_http(response.status_code, response.headers or {}, response.body or "")


CHAT = ChatType(
    "slack-webhook", SlackWebhookSettings, SlackWebhook, template="slack", fits=slack_fits
)
