"""Slack's Web API chat.postMessage, through slack-sdk's AsyncWebClient."""

from __future__ import annotations

from typing import Literal

import aiohttp
from pydantic import Field, SecretStr
from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

from bridge.chats.base import Body, ChatType, DestinationSettings
from bridge.chats.limits import slack_fits
from bridge.outcome import Outcome, from_slack_api


class SlackApiSettings(DestinationSettings):
    type: Literal["slack-api"]
    token: SecretStr
    channel: str = Field(min_length=1)
    api_url: str = "https://slack.com/api/"


class SlackApi:
    def __init__(self, settings: SlackApiSettings, session: aiohttp.ClientSession) -> None:
        self.channel = settings.channel
        # Retries are decided in one place (bridge.outcome), never inside the client.
        self.client = AsyncWebClient(
            token=settings.token.get_secret_value(),
            base_url=settings.api_url,
            session=session,
            retry_handlers=[],
        )

    async def send(self, body: Body, delivery_id: int) -> Outcome:
        payload = body if isinstance(body, dict) else {"text": body}
        try:
            response = await self.client.chat_postMessage(channel=self.channel, **payload)
        except SlackApiError as exc:
            answer = exc.response
            return from_slack_api(answer.status_code, answer.headers or {}, answer.data)
        return from_slack_api(response.status_code, response.headers or {}, response.data)


CHAT = ChatType("slack-api", SlackApiSettings, SlackApi, template="slack", fits=slack_fits)
