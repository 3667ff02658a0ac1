"""Stateful fakes of the two chats that thread and edit, on 127.0.0.1: a Slack workspace
(Web API `chat.postMessage`, `chat.update`) and a Matrix homeserver (`PUT .../send/
m.room.message/{txn}` with `m.thread` and `m.replace` relations). Each keeps its messages
as the real chat shows them, so a test reads the channel's final state, not requests.

Usage::

    async with FakeSlack() as slack, FakeMatrix() as matrix:
        ...  # point destinations at slack.api_url and matrix.url
        slack.delete(ts)          # a user deletes a message
        slack.fail_next(503)      # the next call answers 503
        slack.state()             # {root headline: {reply headlines}} of live messages
"""

from __future__ import annotations

import itertools
import json
import re
import time
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Self

from aiohttp import web

CHANNEL_ID = "C0CIALERTS"
HEADLINE_MARKS = ("Failing since", "Fixed by")


@dataclass
class SlackMessage:
    ts: str
    thread_ts: str | None
    text: str
    blocks: list[Any]
    edits: int = 0
    mentioned: bool = False  # when posted
    posted: str = ""  # the headline when posted

    def __post_init__(self) -> None:
        self.posted = self.headline

    @property
    def headline(self) -> str:
        """The header block's text; a marked message has none (its text instead)."""
        if self.blocks and self.blocks[0].get("type") == "header":
            return str(self.blocks[0]["text"]["text"])
        return "MARKED: " + self.text

    @property
    def live(self) -> bool:
        return not self.headline.startswith("MARKED: ")


class _Server:
    def __init__(self) -> None:
        self.runner: web.AppRunner | None = None
        self.port = 0
        self.failures: list[int] = []  # statuses the next calls answer with, in order
        self.calls = 0
        self.times: list[float] = []  # when each call arrived (time.monotonic())

    def app(self) -> web.Application:
        raise NotImplementedError

    async def __aenter__(self) -> Self:
        self.runner = web.AppRunner(self.app(), access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.port = int(self.runner.addresses[0][1])
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.runner is not None:
            await self.runner.cleanup()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def fail_next(self, *statuses: int) -> None:
        self.failures.extend(statuses)

    def _failure(self) -> web.Response | None:
        self.calls += 1
        self.times.append(time.monotonic())
        if self.failures:
            return web.json_response({"error": "busy"}, status=self.failures.pop(0))
        return None


class FakeSlack(_Server):
    def __init__(self) -> None:
        super().__init__()
        self.messages: dict[str, SlackMessage] = {}
        self.deleted: set[str] = set()
        self.ticks = itertools.count(1)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/api/chat.postMessage", self._post)
        app.router.add_post("/api/chat.update", self._update)
        return app

    @property
    def api_url(self) -> str:
        return self.url + "/api/"

    def delete(self, ts: str) -> None:
        self.deleted.add(ts)
        del self.messages[ts]

    async def _post(self, request: web.Request) -> web.Response:
        if (failure := self._failure()) is not None:
            return failure
        data = await request.json()
        thread = data.get("thread_ts")
        if thread is not None and thread not in self.messages:
            return web.json_response({"ok": False, "error": "thread_not_found"})
        ts = f"1700000000.{next(self.ticks):06d}"
        text = str(data.get("text", ""))
        self.messages[ts] = SlackMessage(
            ts, thread, text, list(data.get("blocks") or []), mentioned="<@U0ONCALL>" in text
        )
        return web.json_response({"ok": True, "channel": CHANNEL_ID, "ts": ts})

    async def _update(self, request: web.Request) -> web.Response:
        if (failure := self._failure()) is not None:
            return failure
        data = await request.json()
        message = self.messages.get(data.get("ts", ""))
        if message is None or data.get("channel") != CHANNEL_ID:
            return web.json_response({"ok": False, "error": "message_not_found"})
        message.text = str(data.get("text", ""))
        if "blocks" in data:
            message.blocks = list(data["blocks"])
        message.edits += 1
        return web.json_response({"ok": True, "channel": CHANNEL_ID, "ts": message.ts})

    def top(self) -> list[SlackMessage]:
        return [m for m in self.messages.values() if m.thread_ts is None]

    def replies(self, ts: str) -> list[SlackMessage]:
        return [m for m in self.messages.values() if m.thread_ts == ts]

    def state(self) -> dict[str, frozenset[str]]:
        """Each live message in the channel, by headline, with its thread's live replies."""
        found: dict[str, frozenset[str]] = {}
        for message in self.top():
            if message.live:
                assert message.headline not in found, f"shown twice: {message.headline}"
                replies = frozenset(r.headline for r in self.replies(message.ts) if r.live)
                found[message.headline] = replies
        return found


@dataclass
class MatrixEvent:
    event_id: str
    content: dict[str, Any]
    thread: str | None
    edits: int = 0
    mentioned: list[str] = field(default_factory=list)
    posted: str = ""  # the headline when posted

    def __post_init__(self) -> None:
        self.posted = self.headline

    @property
    def headline(self) -> str:
        body = str(self.content.get("body", ""))
        return (body.splitlines() or [""])[0] if "format" in self.content else "MARKED: " + body

    @property
    def live(self) -> bool:
        return not self.headline.startswith("MARKED: ")


class FakeMatrix(_Server):
    def __init__(self) -> None:
        super().__init__()
        self.events: dict[str, MatrixEvent] = {}
        self.transactions: dict[str, str] = {}
        self.edit_events: list[dict[str, Any]] = []  # every m.replace event, as sent
        self.ids = itertools.count(1)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_put("/_matrix/client/v3/rooms/{room}/send/m.room.message/{txn}", self._send)
        return app

    def redact(self, event_id: str) -> None:
        del self.events[event_id]

    async def _send(self, request: web.Request) -> web.Response:
        if (failure := self._failure()) is not None:
            return failure
        txn = request.match_info["txn"]
        if txn in self.transactions:
            return web.json_response({"event_id": self.transactions[txn]})
        content = json.loads(await request.read())
        relation = content.get("m.relates_to") or {}
        target = relation.get("event_id")
        if relation and target not in self.events:
            return web.json_response({"errcode": "M_NOT_FOUND", "error": "no event"}, status=404)
        event_id = f"$event{next(self.ids)}"
        self.transactions[txn] = event_id
        if relation.get("rel_type") == "m.replace":
            self.edit_events.append(content)
            edited = self.events[target]
            edited.content = dict(content["m.new_content"])
            edited.edits += 1
            return web.json_response({"event_id": event_id})
        thread = target if relation.get("rel_type") == "m.thread" else None
        mentioned = list((content.get("m.mentions") or {}).get("user_ids", []))
        self.events[event_id] = MatrixEvent(event_id, content, thread, mentioned=mentioned)
        return web.json_response({"event_id": event_id})

    def top(self) -> list[MatrixEvent]:
        return [e for e in self.events.values() if e.thread is None]

    def state(self) -> dict[str, frozenset[str]]:
        found: dict[str, frozenset[str]] = {}
        for event in self.top():
            if event.live:
                assert event.headline not in found, f"shown twice: {event.headline}"
                replies = frozenset(
                    e.headline
                    for e in self.events.values()
                    if e.thread == event.event_id and e.live
                )
                found[event.headline] = replies
        return found


def subject(headline: str) -> int:
    """The build a headline is about: a root's first failed build, or a reply's build."""
    for pattern in (r"since #(\d+)", r"\(#(\d+)", r"#(\d+)"):
        if found := re.search(pattern, headline):
            return int(found.group(1))
    raise AssertionError(f"no build in {headline!r}")
