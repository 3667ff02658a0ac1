"""Any JSON webhook: POST the rendered document, with optional headers."""

from __future__ import annotations

from typing import Literal

import aiohttp
from pydantic import Field, SecretStr

from bridge.chats.base import Body, ChatType, DestinationSettings
from bridge.chats.http import send_json
from bridge.outcome import Outcome, from_http


class GenericSettings(DestinationSettings):
    type: Literal["generic"]
    url: SecretStr
    headers: dict[str, SecretStr] = {}
    rate_limit: float = Field(default=10.0, ge=0)
    burst: int = Field(default=10, ge=1)
    max_failed_runs: int = Field(default=1000, ge=0)
    # A webhook's receiver is a program that reads one build a document: a digest is a
    # different document, so it is asked for (docs/configuration.md).
    digest: bool = False


class Generic:
    def __init__(self, settings: GenericSettings, session: aiohttp.ClientSession) -> None:
        self.session = session
        self.url = settings.url.get_secret_value()
        self.headers = {k: v.get_secret_value() for k, v in settings.headers.items()}

    async def send(self, body: Body, key: str) -> Outcome:
        headers = {"Idempotency-Key": key, **self.headers}
        answer = await send_json(self.session, self.url, body, headers=headers)
        return from_http(answer.status, answer.headers, answer.text)


CHAT = ChatType("generic", GenericSettings, Generic)
