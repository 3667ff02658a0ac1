"""Slack incoming webhooks, through slack-sdk's AsyncWebhookClient."""

from __future__ import annotations

from typing import Literal

import aiohttp
from pydantic import SecretStr
from slack_sdk.webhook.async_client import AsyncWebhookClient

from bridge.chats.base import Body, ChatType, DestinationSettings
from bridge.chats.limits import slack_check, slack_fits
from bridge.chats.webhook import capped_session
from bridge.outcome import Outcome, from_http


class SlackWebhookSettings(DestinationSettings):
    type: Literal["slack-webhook"]
    url: SecretStr


class SlackWebhook:
    def __init__(self, settings: SlackWebhookSettings, session: aiohttp.ClientSession) -> None:
        self.url = settings.url
        self.session = session

    async def send(self, body: Body, delivery_id: int) -> Outcome:
        payload = body if isinstance(body, dict) else {"text": body}
        async with capped_session(self.session) as session:  # answers read up to a cap
            # Retries are decided in one place (bridge.outcome), never inside the client.
            client = AsyncWebhookClient(
                url=self.url.get_secret_value(), session=session, retry_handlers=[]
            )
            response = await client.send_dict(payload)
        return from_http(response.status_code, response.headers or {}, response.body or "")


CHAT = ChatType(
    "slack-webhook",
    SlackWebhookSettings,
    SlackWebhook,
    template="slack",
    fits=slack_fits,
    check=slack_check,
)
