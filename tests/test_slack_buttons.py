"""Slack's buttons, end to end: signed webhooks to the real app and its SQLite store, the
slack-api lane posting to a stateful fake Slack workspace (tests/fakes/threaded_chats.py),
and presses posted to `POST /slack/interactions` as Slack sends them (tests/slack_presses.py):
signed, in the documented `block_actions` shape, with the value of the button as posted.
Replayed and forged presses are refused."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import signal
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from aiohttp.test_utils import TestClient, TestServer

from bridge.cli import main
from bridge.config import Config
from bridge.server import RUNTIME, create_app
from bridge.slack_interactions import ACKNOWLEDGE, MUTE
from tests.conftest import make_config, signed_headers
from tests.fakes.threaded_chats import FakeSlack, SlackMessage
from tests.serve import BridgeProcess, free_port
from tests.slack_presses import SIGNING_SECRET, USER_ID, block_actions, form, signed
from tests.test_incident_threads import body, drained, served
from tests.test_policy import settings as quick_settings

MENTION = "<@U0ONCALL>"


def config(folder: Path, slack: FakeSlack, interactive: bool = True) -> Config:
    section = f'\n[slack]\nsigning_secret = "{SIGNING_SECRET}"\n' if interactive else ""
    return make_config(
        folder,
        quick_settings()
        + section
        + f"""
[[destinations]]
name = "slack"
type = "slack-api"
token = "xoxb-1-2-buttons"
channel = "#ci-alerts"
api_url = "{slack.api_url}"
timeout = "2s"
rate_limit = 0

[[routes]]
notify = ["failed", "fixed"]
destinations = ["slack"]
mention = ["{MENTION}"]
""",
    )


@asynccontextmanager
async def bridge(config: Config) -> AsyncIterator[TestClient[Any, Any]]:
    client: TestClient[Any, Any] = TestClient(TestServer(create_app(config)))
    await client.start_server()
    try:
        yield client
    finally:
        await client.close()


async def build(client: TestClient[Any, Any], number: int, status: str = "FAILED") -> None:
    data = body(number, status)
    response = await client.post("/webhook", data=data, headers=signed_headers(data))
    assert response.status == 202, await response.text()
    await drained(client.app[RUNTIME].store)


def root(slack: FakeSlack) -> SlackMessage:
    [found] = slack.top()
    return found


def buttons(message: SlackMessage) -> dict[str, str]:
    """The message's buttons: action id -> value."""
    return {
        element["action_id"]: element["value"]
        for block in message.blocks
        if block["type"] == "actions"
        for element in block["elements"]
    }


def said(message: SlackMessage) -> str:
    return json.dumps([b for b in message.blocks if b["type"] == "context"])


async def press(
    client: TestClient[Any, Any], message: SlackMessage, action: str, **headers: str
) -> tuple[int, Any]:
    data = form(block_actions(action, buttons(message)[action], message_ts=message.ts))
    response = await client.post(
        "/slack/interactions", data=data, headers={**signed(data), **headers}
    )
    answer = await response.text()
    await drained(client.app[RUNTIME].store)
    return response.status, json.loads(answer) if answer else None


async def test_acknowledge_says_who_on_the_root_and_later_builds_mention_no_one(
    tmp_path: Path,
) -> None:
    async with FakeSlack() as slack, bridge(config(tmp_path, slack)) as client:
        await build(client, 41)
        first = root(slack)
        assert first.mentioned and set(buttons(first)) == {ACKNOWLEDGE, MUTE}

        assert await press(client, first, ACKNOWLEDGE) == (200, None)

        acknowledged = root(slack)
        assert f"Acknowledged by <@{USER_ID}>" in said(acknowledged)
        assert set(buttons(acknowledged)) == {MUTE}
        await build(client, 42)
        [reply] = slack.replies(first.ts)
        assert "#42" in reply.headline and not reply.mentioned
        store = client.app[RUNTIME].store
        [ack] = await store.acknowledgements("slack", "andy-corp", "containers-devel")
        assert (ack.anchor, ack.user_id) == (41, USER_ID)

        # The next incident of the trigger is news again: its root mentions.
        await build(client, 43, "PASSED")
        await build(client, 44)
        newest = [m for m in slack.top() if m.ts != first.ts]
        assert len(newest) == 1 and newest[0].mentioned
        assert set(buttons(newest[0])) == {ACKNOWLEDGE, MUTE}


async def test_without_acknowledgement_a_later_build_mentions(tmp_path: Path) -> None:
    """The other side of the case above: what the acknowledgement changes."""
    async with FakeSlack() as slack, bridge(config(tmp_path, slack)) as client:
        await build(client, 41)
        await build(client, 42)
        [reply] = slack.replies(root(slack).ts)
        assert reply.mentioned


async def test_mute_makes_a_silence_of_the_trigger_shown_on_the_root_and_listed(
    tmp_path: Path,
) -> None:
    async with FakeSlack() as slack, bridge(config(tmp_path, slack)) as client:
        await build(client, 41)
        first = root(slack)
        before = time.time()

        assert await press(client, first, MUTE) == (200, None)

        muted = root(slack)
        assert ":mute: Muted until <!date^" in said(muted) and USER_ID in said(muted)
        assert set(buttons(muted)) == {ACKNOWLEDGE}
        store = client.app[RUNTIME].store
        [silence] = await store.silences(time.time())
        assert (silence.factory, silence.trigger, silence.destination) == (
            "andy-corp",
            "containers-devel",
            "slack",
        )
        assert silence.author == f"ana (Slack {USER_ID})"
        assert before + 24 * 3600 - 5 < silence.ends_at < time.time() + 24 * 3600 + 5

        # Muted: the next build is stored silenced, never sent.
        await build(client, 42)
        assert slack.replies(first.ts) == []
        states = [(d.build_id, d.state) for d in await store.list_deliveries(destination="slack")]
        assert (42, "silenced") in states

        # Expired while the incident still fails: the next build notifies as usual, and the
        # silenced build gets no reply of its own.
        await store.expire_silence(silence.id, time.time())
        await build(client, 43)
        [reply] = slack.replies(first.ts)
        assert "#43" in reply.headline and reply.mentioned
        assert ":mute:" not in said(root(slack))
        assert "3 failed builds" in root(slack).headline


async def test_mute_pressed_twice_or_by_two_at_once_makes_one_silence(tmp_path: Path) -> None:
    async with FakeSlack() as slack, bridge(config(tmp_path, slack)) as client:
        await build(client, 41)
        first = root(slack)  # as each presser sees it, Mute still on it

        async def mute_as(user_id: str, username: str) -> int:
            value = buttons(first)[MUTE]
            data = form(
                block_actions(MUTE, value, user_id=user_id, username=username, message_ts=first.ts)
            )
            response = await client.post("/slack/interactions", data=data, headers=signed(data))
            return response.status

        statuses = await asyncio.gather(mute_as("U0ANA", "ana"), mute_as("U0BOB", "bob"))
        assert statuses == [200, 200]
        assert await mute_as("U0CARL", "carl") == 200  # later, on the same stale root
        await drained(client.app[RUNTIME].store)

        assert len(await client.app[RUNTIME].store.silences(None)) == 1
        assert ":mute: Muted until <!date^" in said(root(slack))


async def test_forged_stale_and_replayed_presses_are_refused(tmp_path: Path) -> None:
    async with FakeSlack() as slack, bridge(config(tmp_path, slack)) as client:
        await build(client, 41)
        first = root(slack)
        data = form(block_actions(ACKNOWLEDGE, buttons(first)[ACKNOWLEDGE]))
        url = "/slack/interactions"
        refusals = [
            {},  # unsigned
            signed(data, secret="not-the-signing-secret"),  # forged
            signed(data, timestamp=int(time.time()) - 301),  # replayed after 5 minutes
        ]
        for headers in refusals:
            response = await client.post(url, data=data, headers=headers)
            assert response.status == 401
            assert set(await response.json()) == {"error"}
        headers = signed(data)
        assert (await client.post(url, data=data, headers=headers)).status == 200
        again = await client.post(url, data=data, headers=headers)  # replayed at once
        assert again.status == 401 and "replay" in (await again.json())["error"]
        # A forged body under a good signature of another body.
        other = form(block_actions(MUTE, buttons(first)[MUTE]))
        forged = await client.post(url, data=other, headers=signed(data))
        assert forged.status == 401
        store = client.app[RUNTIME].store
        assert await store.silences(None) == []


async def test_what_is_not_a_press_of_ours_is_answered_as_json(tmp_path: Path) -> None:
    async with FakeSlack() as slack, bridge(config(tmp_path, slack)) as client:
        url = "/slack/interactions"
        cases = [
            (form({"type": "view_submission"}), 400),
            (b"payload=%7Bbroken", 400),
            (form(block_actions(ACKNOWLEDGE, '["nowhere","andy-corp","t",1]')), 400),
            (form(block_actions("another-apps-button", "x")), 200),
        ]
        for data, status in cases:
            response = await client.post(url, data=data, headers=signed(data))
            assert response.status == status, await response.text()
            if status != 200:
                assert set(await response.json()) == {"error"}
        big = b"payload=" + b"x" * 300_000
        response = await client.post(url, data=big, headers=signed(big))
        assert response.status == 413 and "error" in await response.json()


async def test_without_a_slack_section_no_buttons_and_the_endpoint_is_404(
    tmp_path: Path,
) -> None:
    async with FakeSlack() as slack, bridge(config(tmp_path, slack, False)) as client:
        await build(client, 41)
        assert buttons(root(slack)) == {}
        data = form(block_actions(ACKNOWLEDGE, '["slack","andy-corp","containers-devel",41]'))
        response = await client.post("/slack/interactions", data=data, headers=signed(data))
        assert response.status == 404 and "error" in await response.json()


# -- through `jobserv-bridge serve` ----------------------------------------------------------


async def test_buttons_and_silences_through_jobserv_bridge_serve(tmp_path: Path) -> None:
    async with FakeSlack() as slack:
        port = free_port()
        logs = tmp_path / "logs"
        logs.mkdir()
        text = config(tmp_path, slack).path.read_text()
        path = tmp_path / "serve.toml"
        server = f'[server]\nhost = "127.0.0.1"\nport = {port}\nshutdown_timeout = "2s"\n'
        store = '[store]\npath = "serve.sqlite3"\n[admin]\nenabled = false\n'
        path.write_text(server + store + text.replace('[server]\nshutdown_timeout = "0.5s"\n', ""))
        process = BridgeProcess(path, port, logs)
        try:
            await process.start()
            assert await process.post(body(41, "FAILED")) == 202
            await served(tmp_path / "serve.sqlite3")
            first = root(slack)
            data = form(block_actions(ACKNOWLEDGE, buttons(first)[ACKNOWLEDGE]))
            async with process.session.post(
                f"{process.base_url}/slack/interactions", data=data, headers=signed(data)
            ) as response:
                assert response.status == 200
            await served(tmp_path / "serve.sqlite3")
            assert f"Acknowledged by <@{USER_ID}>" in said(root(slack))

            added = await asyncio.to_thread(
                main,
                ["silence", "add", "--config", str(path), "--for", "1h", "--comment", "swap"],
            )
            assert added == 0
            assert await process.post(body(42, "FAILED")) == 202
            await served(tmp_path / "serve.sqlite3")
            assert slack.replies(first.ts) == []
            process.send_signal(signal.SIGTERM)
            assert await process.wait_exit(10) == 0
        finally:
            await process.close()
        assert "silenced" in (await asyncio.to_thread(outbox_list, path))


def outbox_list(path: Path) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["outbox", "--config", str(path), "list", "--silenced"]) == 0
    return out.getvalue()
