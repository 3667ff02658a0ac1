"""Slack's Web API chat.postMessage, through slack-sdk's AsyncWebClient."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, Literal

import aiohttp
from pydantic import Field, SecretStr
from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient
from slack_sdk.web.async_slack_response import AsyncSlackResponse

from bridge.chats.base import Body, ChatType, DestinationSettings
from bridge.chats.http import capped_session
from bridge.chats.limits import slack_check, slack_fits
from bridge.outcome import Outcome, Retry, Sent, from_slack_api


class SlackApiSettings(DestinationSettings):
    type: Literal["slack-api"]
    token: SecretStr
    channel: str = Field(min_length=1)
    api_url: str = "https://slack.com/api/"


class SlackApi:
    def __init__(self, settings: SlackApiSettings, session: aiohttp.ClientSession) -> None:
        self.settings = settings
        self.token = settings.token
        self.api_url = settings.api_url
        self.session = session

    async def send(self, body: Body, key: str) -> Outcome:
        return await self._call("chat_postMessage", **prepare(self.settings, body))

    async def reply(self, body: Body, key: str, thread: str) -> Outcome:
        channel, ts = thread.split("/", 1)
        return await self._call("chat_postMessage", channel=channel, thread_ts=ts, **_payload(body))

    async def update(self, thread: str, body: Body, key: str) -> Outcome:
        channel, ts = thread.split("/", 1)
        return await self._call("chat_update", channel=channel, ts=ts, **_payload(body))

    def text_body(self, text: str) -> Body:
        # chat.update keeps a message's blocks unless it is given new ones.
        escaped = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
        section = {"type": "section", "text": {"type": "mrkdwn", "text": escaped}}
        return {"text": escaped, "blocks": [section]}

    @asynccontextmanager
    async def _client(self) -> AsyncIterator[AsyncWebClient]:
        async with capped_session(self.session) as session:
            # Retries are decided in one place (bridge.outcome), never inside the client.
            yield AsyncWebClient(
                token=self.token.get_secret_value(),
                base_url=self.api_url,
                session=session,
                retry_handlers=[],
            )

    async def _call(self, method: str, **arguments: Any) -> Outcome:
        async with self._client() as client:
            try:
                response = await getattr(client, method)(**arguments)
            except SlackApiError as exc:
                return _classify(exc.response)
            except (AttributeError, TypeError) as exc:
                # slack-sdk trips over some answers that are not JSON (text/plain, a 200).
                reason = f"slack: an answer that is not the Web API's JSON ({type(exc).__name__})"
                return Retry(reason, code="not_api")
        outcome = _classify(response)
        data = response.data
        if isinstance(outcome, Sent) and isinstance(data, dict) and data.get("ts"):
            # chat.update needs the channel's id, which the answer gives even for "#name".
            return Sent(ref=f"{data.get('channel') or arguments['channel']}/{data['ts']}")
        return outcome


def _classify(response: Any) -> Outcome:
    if isinstance(response, AsyncSlackResponse):
        return from_slack_api(response.status_code, response.headers or {}, response.data)
    # An answer slack-sdk could not read as JSON comes as the raw HTTP response.
    headers = getattr(response, "headers", None) or {}
    return from_slack_api(int(getattr(response, "status", 0)), headers, None)


def _payload(body: Body) -> dict[str, Any]:
    return body if isinstance(body, dict) else {"text": body}


def prepare(settings: SlackApiSettings, body: Body) -> dict[str, Any]:
    """chat.postMessage's arguments: the body and the destination's channel."""
    return {**_payload(body), "channel": settings.channel}


CHAT = ChatType(
    "slack-api",
    SlackApiSettings,
    SlackApi,
    template="slack",
    fits=slack_fits,
    threads=True,
    prepare=prepare,
    check=slack_check,
)
