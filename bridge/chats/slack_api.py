"""Slack's Web API chat.postMessage, through slack-sdk's AsyncWebClient."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Literal

import aiohttp
from pydantic import Field, SecretStr
from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

from bridge.chats.base import Body, ChatType, DestinationSettings
from bridge.chats.limits import slack_fits
from bridge.outcome import Outcome, Sent, from_slack_api


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
        return await self._call(
            self.client.chat_postMessage, channel=self.channel, **_payload(body)
        )

    async def reply(self, body: Body, delivery_id: int, thread: str) -> Outcome:
        channel, ts = thread.split("/", 1)
        return await self._call(
            self.client.chat_postMessage, channel=channel, thread_ts=ts, **_payload(body)
        )

    async def update(self, thread: str, body: Body) -> Outcome:
        channel, ts = thread.split("/", 1)
        return await self._call(self.client.chat_update, channel=channel, ts=ts, **_payload(body))

    def text_body(self, text: str) -> Body:
        # chat.update keeps a message's blocks unless it is given new ones.
        escaped = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
        section = {"type": "section", "text": {"type": "mrkdwn", "text": escaped}}
        return {"text": escaped, "blocks": [section]}

    async def _call(self, method: Callable[..., Awaitable[Any]], **arguments: Any) -> Outcome:
        try:
            response = await method(**arguments)
        except SlackApiError as exc:
            answer = exc.response
            return from_slack_api(answer.status_code, answer.headers or {}, answer.data)
        outcome = from_slack_api(response.status_code, response.headers or {}, response.data)
        data = response.data
        if isinstance(outcome, Sent) and isinstance(data, dict) and data.get("ts"):
            # chat.update needs the channel's id, which the answer gives even for "#name".
            return Sent(ref=f"{data.get('channel') or arguments['channel']}/{data['ts']}")
        return outcome


def _payload(body: Body) -> dict[str, Any]:
    return body if isinstance(body, dict) else {"text": body}


CHAT = ChatType(
    "slack-api", SlackApiSettings, SlackApi, template="slack", fits=slack_fits, threads=True
)
