"""Matrix, through the client-server API: an `m.room.message` event in one room.

The event is sent with `PUT .../send/m.room.message/{txn_id}`, and the transaction
id is the same for every attempt of one delivery: a homeserver that already took it
(a send whose answer was lost) answers with the same event instead of posting twice.
"""

from __future__ import annotations

from typing import Any, Literal
from urllib.parse import quote

import aiohttp
from pydantic import Field, HttpUrl, SecretStr, field_validator
from yarl import URL

from bridge.chats.base import Body, ChatType, DestinationSettings
from bridge.chats.http import Answer, send_json
from bridge.chats.limits import matrix_fits
from bridge.outcome import Outcome, Sent, from_http


class MatrixSettings(DestinationSettings):
    type: Literal["matrix"]
    homeserver: HttpUrl  # https://matrix.example.org
    room_id: str  # !abcdef:example.org (room version 12 ids have no server part)
    token: SecretStr  # the bot user's access token
    # Synapse's default limit for a user's messages: 0.2 a second, bursts of 10.
    rate_limit: float = Field(default=0.2, ge=0)
    burst: int = Field(default=10, ge=1)

    @field_validator("room_id")
    @classmethod
    def _room_id(cls, room_id: str) -> str:
        if not room_id.startswith("!") or len(room_id) < 2 or any(c.isspace() for c in room_id):
            raise ValueError("expected a room id like !abcdef:example.org (not an #alias)")
        return room_id


def retry_after(answer: Answer) -> float | None:
    """Matrix's own signal: `retry_after_ms` in an M_LIMIT_EXCEEDED error."""
    milliseconds: Any = answer.json().get("retry_after_ms")
    if isinstance(milliseconds, int | float) and not isinstance(milliseconds, bool):
        return milliseconds / 1000
    return None


class Matrix:
    def __init__(self, settings: MatrixSettings, session: aiohttp.ClientSession) -> None:
        self.session = session
        room = quote(settings.room_id, safe="")
        self.rooms_url = (
            f"{str(settings.homeserver).rstrip('/')}/_matrix/client/v3/rooms/{room}"
            "/send/m.room.message/"
        )
        self.headers = {"Authorization": f"Bearer {settings.token.get_secret_value()}"}

    async def send(self, body: Body, key: str) -> Outcome:
        content = _content(body)
        return await self._put(content, key)

    async def reply(self, body: Body, key: str, thread: str) -> Outcome:
        """A reply in the thread of event `thread` (an `m.thread` relation), shown as a
        reply to it by clients that know no threads."""
        relation = {
            "rel_type": "m.thread",
            "event_id": thread,
            "is_falling_back": True,
            "m.in_reply_to": {"event_id": thread},
        }
        content = {**_content(body), "m.relates_to": relation}
        return await self._put(content, key)

    async def update(self, thread: str, body: Body, key: str) -> Outcome:
        """An edit of event `thread` (an `m.replace` relation): its new content, and a
        fallback starred text; no one is mentioned again. `key` is its transaction id: a
        homeserver answers an id it took before with that event and changes nothing, so an
        edit back to an earlier content needs a new one (not one derived from the body)."""
        new = _content(body)
        content: dict[str, Any] = {
            **new,
            "body": "* " + str(new.get("body", "")),
            "m.new_content": new,
            "m.mentions": {},
            "m.relates_to": {"rel_type": "m.replace", "event_id": thread},
        }
        if "formatted_body" in new:
            content["formatted_body"] = "* " + str(new["formatted_body"])
        return await self._put(content, key)

    def text_body(self, text: str) -> Body:
        return {"msgtype": "m.notice", "body": text}

    async def _put(self, content: dict[str, Any], txn: str) -> Outcome:
        url = URL(self.rooms_url + quote(txn, safe=""), encoded=True)
        answer = await send_json(self.session, url, content, method="PUT", headers=self.headers)
        after = retry_after(answer) if answer.status == 429 else None
        outcome = from_http(answer.status, answer.headers, answer.text, retry_after=after)
        event_id = answer.json().get("event_id")
        if isinstance(outcome, Sent) and isinstance(event_id, str):
            return Sent(ref=event_id)
        return outcome


def _content(body: Body) -> dict[str, Any]:
    return body if isinstance(body, dict) else {"msgtype": "m.notice", "body": body}


def check(body: Body) -> str | None:
    """A room message needs its `msgtype` and its plain `body`."""
    if not isinstance(body, dict):
        return "not a JSON object"
    missing = [key for key in ("msgtype", "body") if not isinstance(body.get(key), str)]
    return f"needs {' and '.join(f'`{key}`' for key in missing)}" if missing else None


CHAT = ChatType("matrix", MatrixSettings, Matrix, fits=matrix_fits, threads=True, check=check)
