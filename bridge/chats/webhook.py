"""What the JSON webhook chats share: one request, and its answer read once."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
from yarl import URL

from bridge.chats.base import Body
from bridge.chats.limits import encode_json


@dataclass(frozen=True)
class Answer:
    status: int
    headers: Mapping[str, str]
    text: str

    def json(self) -> dict[str, Any]:
        """The answer's JSON object; empty when it is not one (an HTML error page, ...)."""
        try:
            data = json.loads(self.text)
        except ValueError:
            return {}
        return data if isinstance(data, dict) else {}


async def send_json(
    session: aiohttp.ClientSession,
    url: str | URL,
    body: Body,
    *,
    method: str = "POST",
    headers: Mapping[str, str] | None = None,
) -> Answer:
    """Send the body as the exact bytes its size was measured on (compact UTF-8 JSON)."""
    async with session.request(
        method,
        url,
        data=encode_json(body),
        headers={"Content-Type": "application/json; charset=utf-8", **(headers or {})},
    ) as response:
        text = await response.text(errors="replace")
        return Answer(response.status, response.headers, text)
