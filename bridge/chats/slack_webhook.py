"""Slack incoming webhooks, through slack-sdk's AsyncWebhookClient."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

import aiohttp
from pydantic import SecretStr
from slack_sdk.webhook.async_client import AsyncWebhookClient

from bridge.chats.base import Body, ChatType, DestinationSettings
from bridge.chats.http import capped_session
from bridge.chats.limits import slack_check, slack_fits
from bridge.outcome import Outcome, Retry, from_http, parse_retry_after


class SlackWebhookSettings(DestinationSettings):
    type: Literal["slack-webhook"]
    url: SecretStr


class SlackWebhook:
    def __init__(self, settings: SlackWebhookSettings, session: aiohttp.ClientSession) -> None:
        self.url = settings.url
        self.session = session

    async def send(self, body: Body, key: str) -> Outcome:
        payload = body if isinstance(body, dict) else {"text": body}
        async with capped_session(self.session) as session:  # answers read up to a cap
            # Retries are decided in one place (bridge.outcome), never inside the client.
            client = AsyncWebhookClient(
                url=self.url.get_secret_value(), session=session, retry_handlers=[]
            )
            response = await client.send_dict(payload)
        return _outcome(response.status_code, response.headers or {}, response.body or "")


def _outcome(status: int, headers: Mapping[str, str], text: str) -> Outcome:
    """Slack answers `200 ok`; another 2xx (a proxy's page) came from something on the way,
    and Slack itself may well answer next time."""
    if 200 <= status < 300 and text.strip() != "ok":
        reason = f"slack: HTTP {status} without Slack's answer ok"
        return Retry(reason, parse_retry_after(headers.get("Retry-After")), code="not_slack")
    return from_http(status, headers, text)


CHAT = ChatType(
    "slack-webhook",
    SlackWebhookSettings,
    SlackWebhook,
    template="slack",
    fits=slack_fits,
    check=slack_check,
)
