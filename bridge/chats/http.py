"""HTTP for the chats: post a JSON body, read a capped answer."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import aiohttp
from yarl import URL

from bridge.chats.base import Body
from bridge.chats.limits import encode_json

# The most of a chat's answer that is read: plenty for any API's JSON, and a proxy's
# endless page costs no more. The rest is left unread (its connection is not reused).
MAX_ANSWER_BYTES = 65536


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
        return Answer(response.status, response.headers, await read_text(response))


async def read_answer(response: aiohttp.ClientResponse) -> bytes:
    """The answer's body, up to MAX_ANSWER_BYTES."""
    chunks: list[bytes] = []
    size = 0
    while size < MAX_ANSWER_BYTES:
        chunk = await response.content.read(MAX_ANSWER_BYTES - size)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


async def read_text(response: aiohttp.ClientResponse) -> str:
    """The answer's body as text, up to MAX_ANSWER_BYTES; undecodable bytes replaced."""
    body = await read_answer(response)
    try:
        return body.decode(response.charset or "utf-8", errors="replace")
    except LookupError:  # a charset Python does not know
        return body.decode("utf-8", errors="replace")


@asynccontextmanager
async def capped_session(shared: aiohttp.ClientSession) -> AsyncIterator[aiohttp.ClientSession]:
    """A session on `shared`'s connections whose answers are read up to MAX_ANSWER_BYTES,
    for a client library (slack-sdk) that reads answers itself."""
    if shared.closed:
        raise aiohttp.ClientConnectionError("the HTTP session is closed")
    async with aiohttp.ClientSession(
        connector=shared.connector, connector_owner=False, response_class=CappedResponse
    ) as session:
        yield session


class CappedResponse(aiohttp.ClientResponse):
    """A response whose read() (and so text() and json()) stops at MAX_ANSWER_BYTES,
    for a client library that reads answers itself."""

    async def read(self) -> bytes:
        if self._body is None:
            try:
                self._body = await read_answer(self)
            except BaseException:
                self.close()
                raise
        return self._body
