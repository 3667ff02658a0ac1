"""Slack threads: an incident lives in the thread of its root message.

The real app posts through slack-sdk to a fake Slack Web API (`chat.postMessage`,
`chat.update`). An incident's root is posted to the channel and edited to show the
incident (first failed build, latest, count, fixed by); later builds are replies in its
thread; a fix closes it, and the next failure starts a new one. The records are kept in
the SQLite store, so this holds across restarts. (Any arrival order: see
tests/test_incident_threads.py.)
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from aiohttp.test_utils import TestClient

from bridge.config import Config
from bridge.server import RUNTIME, create_app
from tests.conftest import make_config
from tests.fakes.chat_server import FakeChat, RecordedRequest, Reply, SlackApiError, SlackApiOk
from tests.test_policy import build_body, post, settings, settled

ClientFactory = Callable[[Any], Awaitable[TestClient[Any, Any]]]

POST = "/api/chat.postMessage"
UPDATE = "/api/chat.update"
TOKEN = "xoxb-1111-2222-threadsTOKEN"
CHANNEL_NAME = "#ci-alerts"
CHANNEL_ID = "C0CIALERTS"  # what Slack answers for the channel, and what chat.update needs
FIRST_ROOT = "1700000001.000100"
SECOND_ROOT = "1700000002.000200"


def slack_config(
    folder: Path,
    fake: FakeChat,
    notify: tuple[str, ...] = ("first_failure", "still_failing", "fixed"),
) -> Config:
    return make_config(
        folder,
        settings()
        + f"""
[[destinations]]
name = "ci-alerts"
type = "slack-api"
token = "{TOKEN}"
channel = "{CHANNEL_NAME}"
api_url = "{fake.url("/api/")}"
timeout = "0.5s"
rate_limit = 0

[[routes]]
notify = {json.dumps(list(notify))}
destinations = ["ci-alerts"]
""",
    )


def slack_api(fake: FakeChat) -> None:
    fake.default(POST, SlackApiOk(channel=CHANNEL_ID))
    fake.default(UPDATE, SlackApiOk(channel=CHANNEL_ID))


def root_answer(ts: str) -> Reply:
    """chat.postMessage's answer to a new message in the channel, with a known `ts`."""
    return Reply(200, json={"ok": True, "channel": CHANNEL_ID, "ts": ts})


async def sent(
    client: TestClient[Any, Any], fake: FakeChat, body: bytes, posts: int, updates: int = 0
) -> tuple[RecordedRequest, list[RecordedRequest]]:
    """Post a build; wait for the `posts`-th chat.postMessage and `updates` chat.update in all.

    Returns the last message posted and every update so far.
    """
    await post(client, body)
    messages = await fake.wait_for(posts, path=POST)
    edits = await fake.wait_for(updates, path=UPDATE) if updates else []
    return messages[-1], edits


def is_root(message: RecordedRequest) -> bool:
    return "thread_ts" not in message.json


async def test_a_streak_is_one_thread_whose_first_message_shows_the_incident(
    aiohttp_client: ClientFactory, fake_chat: FakeChat, tmp_path: Path
) -> None:
    slack_api(fake_chat)
    fake_chat.script(POST, root_answer(FIRST_ROOT))
    client = await aiohttp_client(create_app(slack_config(tmp_path, fake_chat)))

    root, _ = await sent(client, fake_chat, build_body(41), posts=1)
    still, edits = await sent(client, fake_chat, build_body(42), posts=2, updates=1)

    assert is_root(root)
    assert root.json["channel"] == CHANNEL_NAME
    assert root.headers["Authorization"] == f"Bearer {TOKEN}"
    assert "Failing since #41 (1 failed build)" in root.json["text"]
    # The follow-up: a reply in the first failure's thread, in the channel Slack named.
    assert (still.json["channel"], still.json["thread_ts"]) == (CHANNEL_ID, FIRST_ROOT)
    assert "#42 FAILED — Still failing" in still.json["text"]
    # The first message is edited to show the incident (chat.update needs the channel id),
    # and keeps its first failed build.
    [edit] = edits
    assert (edit.json["channel"], edit.json["ts"]) == (CHANNEL_ID, FIRST_ROOT)
    assert "Failing since #41 (2 failed builds, latest #42)" in edit.json["text"]
    assert "builds/41|#41>" in json.dumps(edit.json["blocks"])
    assert edit.headers["Authorization"] == f"Bearer {TOKEN}"

    fixed, edits = await sent(client, fake_chat, build_body(43, "PASSED"), posts=3, updates=2)

    assert (fixed.json["channel"], fixed.json["thread_ts"]) == (CHANNEL_ID, FIRST_ROOT)
    assert "#43 PASSED — Fixed" in fixed.json["text"]
    assert edits[-1].json["ts"] == FIRST_ROOT
    assert "Fixed by #43 after 2 failed builds (#41-#42)" in edits[-1].json["text"]

    # The fix closed the incident: the next failure starts a new one.
    fake_chat.script(POST, root_answer(SECOND_ROOT))
    broken, _ = await sent(client, fake_chat, build_body(44), posts=4)
    again, edits = await sent(client, fake_chat, build_body(45), posts=5, updates=3)

    assert is_root(broken)
    assert broken.json["channel"] == CHANNEL_NAME
    assert "Failing since #44 (1 failed build)" in broken.json["text"]
    assert again.json["thread_ts"] == SECOND_ROOT
    assert edits[-1].json["ts"] == SECOND_ROOT
    await settled(client.app[RUNTIME].store)
    assert len(fake_chat.requests_to(UPDATE)) == 3  # one edit per follow-up, no more


async def test_threads_outlive_the_app(
    aiohttp_client: ClientFactory, fake_chat: FakeChat, tmp_path: Path
) -> None:
    slack_api(fake_chat)
    fake_chat.script(POST, root_answer(FIRST_ROOT))
    config = slack_config(tmp_path, fake_chat)

    first = await aiohttp_client(create_app(config))
    root, _ = await sent(first, fake_chat, build_body(41), posts=1)
    await first.close()

    second = await aiohttp_client(create_app(config))
    still, edits = await sent(second, fake_chat, build_body(42), posts=2, updates=1)
    fixed, _ = await sent(second, fake_chat, build_body(43, "PASSED"), posts=3, updates=2)
    await second.close()

    fake_chat.script(POST, root_answer(SECOND_ROOT))
    third = await aiohttp_client(create_app(config))
    broken, _ = await sent(third, fake_chat, build_body(44), posts=4)

    assert is_root(root)
    assert still.json["thread_ts"] == FIRST_ROOT
    assert edits[0].json["ts"] == FIRST_ROOT
    assert fixed.json["thread_ts"] == FIRST_ROOT
    assert is_root(broken)  # the closed thread stayed closed


async def test_a_failed_edit_is_retried_and_the_reply_posted_once(
    aiohttp_client: ClientFactory, fake_chat: FakeChat, tmp_path: Path
) -> None:
    slack_api(fake_chat)
    fake_chat.script(POST, root_answer(FIRST_ROOT))
    fake_chat.script(UPDATE, Reply(500, "oops"))
    client = await aiohttp_client(create_app(slack_config(tmp_path, fake_chat)))
    await sent(client, fake_chat, build_body(41), posts=1)

    await sent(client, fake_chat, build_body(42), posts=2, updates=2)
    later, edits = await sent(client, fake_chat, build_body(43), posts=3, updates=3)

    # Each lane sends in order: a resend of #42's reply would have come before #43's.
    texts = [r.json["text"] for r in fake_chat.requests_to(POST)]
    assert ["#41 " in texts[0], "#42 " in texts[1], "#43 " in texts[2]] == [True] * 3
    assert later.json["thread_ts"] == FIRST_ROOT
    assert [e.json["ts"] for e in edits] == [FIRST_ROOT] * 3  # the refused edit, again, next
    assert "3 failed builds, latest #43" in edits[-1].json["text"]
    assert await settled(client.app[RUNTIME].store) == {"pending": 0, "sent": 3, "dead": 0}


async def test_a_reply_slack_refuses_for_now_is_retried_into_the_same_thread(
    aiohttp_client: ClientFactory, fake_chat: FakeChat, tmp_path: Path
) -> None:
    slack_api(fake_chat)
    fake_chat.script(POST, root_answer(FIRST_ROOT), Reply(503, "busy"))
    client = await aiohttp_client(create_app(slack_config(tmp_path, fake_chat)))
    await sent(client, fake_chat, build_body(41), posts=1)

    reply, edits = await sent(client, fake_chat, build_body(42), posts=3, updates=1)

    refused = fake_chat.requests_to(POST)[1]
    assert refused.json["thread_ts"] == reply.json["thread_ts"] == FIRST_ROOT
    assert [e.json["ts"] for e in edits] == [FIRST_ROOT]  # edited once, after the reply
    assert await settled(client.app[RUNTIME].store) == {"pending": 0, "sent": 2, "dead": 0}


async def test_each_trigger_has_its_own_thread(
    aiohttp_client: ClientFactory, fake_chat: FakeChat, tmp_path: Path
) -> None:
    slack_api(fake_chat)
    fake_chat.script(POST, root_answer(FIRST_ROOT), root_answer(SECOND_ROOT))
    client = await aiohttp_client(create_app(slack_config(tmp_path, fake_chat)))
    await sent(client, fake_chat, build_body(41, trigger="platform-main"), posts=1)
    other, _ = await sent(client, fake_chat, build_body(42, trigger="platform-devel"), posts=2)

    main, _ = await sent(client, fake_chat, build_body(43, trigger="platform-main"), posts=3)
    devel, _ = await sent(client, fake_chat, build_body(44, trigger="platform-devel"), posts=4)

    assert is_root(other)
    assert main.json["thread_ts"] == FIRST_ROOT
    assert devel.json["thread_ts"] == SECOND_ROOT


async def test_a_streak_first_announced_as_still_failing_opens_the_thread(
    aiohttp_client: ClientFactory, fake_chat: FakeChat, tmp_path: Path
) -> None:
    slack_api(fake_chat)
    fake_chat.script(POST, root_answer(FIRST_ROOT))
    config = slack_config(tmp_path, fake_chat, notify=("still_failing", "fixed"))
    client = await aiohttp_client(create_app(config))
    await post(client, build_body(41))  # a first failure: not for this route

    opening, _ = await sent(client, fake_chat, build_body(42), posts=2)
    still, _ = await sent(client, fake_chat, build_body(43), posts=3, updates=1)
    fixed, edits = await sent(client, fake_chat, build_body(44, "PASSED"), posts=4, updates=2)

    root = fake_chat.requests_to(POST)[0]
    assert is_root(root)
    assert "Failing since #41 (2 failed builds, latest #42)" in root.json["text"]
    assert opening.json["thread_ts"] == FIRST_ROOT and "#42 FAILED" in opening.json["text"]
    assert still.json["thread_ts"] == fixed.json["thread_ts"] == FIRST_ROOT
    assert [e.json["ts"] for e in edits] == [FIRST_ROOT, FIRST_ROOT]


async def test_a_build_passing_after_a_pass_is_posted_in_the_channel(
    aiohttp_client: ClientFactory, fake_chat: FakeChat, tmp_path: Path
) -> None:
    slack_api(fake_chat)
    fake_chat.script(POST, root_answer(FIRST_ROOT))
    config = slack_config(tmp_path, fake_chat, notify=("failed", "passed"))
    client = await aiohttp_client(create_app(config))
    await sent(client, fake_chat, build_body(41, "PASSED"), posts=1)

    passed, _ = await sent(client, fake_chat, build_body(42, "PASSED"), posts=2)
    broken, _ = await sent(client, fake_chat, build_body(43), posts=3)

    assert is_root(passed)  # no streak, no thread
    assert is_root(broken)
    assert fake_chat.requests_to(UPDATE) == []


async def test_a_reply_refused_because_the_root_is_gone_starts_a_new_root_that_says_so(
    aiohttp_client: ClientFactory, fake_chat: FakeChat, tmp_path: Path
) -> None:
    slack_api(fake_chat)
    fake_chat.script(
        POST,
        root_answer(FIRST_ROOT),
        SlackApiError("thread_not_found"),  # #42's reply: the root was deleted meanwhile
        root_answer(SECOND_ROOT),
    )
    client = await aiohttp_client(create_app(slack_config(tmp_path, fake_chat)))
    await sent(client, fake_chat, build_body(41), posts=1)

    reply, _ = await sent(client, fake_chat, build_body(42), posts=4, updates=1)

    refused, again = fake_chat.requests_to(POST)[1:3]
    assert refused.json["thread_ts"] == FIRST_ROOT
    assert is_root(again)
    assert (
        "Failing since #41 (2 failed builds, latest #42) — the first message of this"
        in (again.json["text"])
    )
    assert reply.json["thread_ts"] == SECOND_ROOT and "#42 FAILED" in reply.json["text"]
    assert await settled(client.app[RUNTIME].store) == {"pending": 0, "sent": 2, "dead": 0}
