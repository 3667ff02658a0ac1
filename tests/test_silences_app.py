"""Silences through the real app: added on the status page (with its CSRF token), in its
JSON API and with `jobserv-bridge silence`; a build they mute is stored `silenced` and never
sent; once expired, the next build is sent as usual. Also through PostgreSQL."""

from __future__ import annotations

import asyncio
import re
import time
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient, TestServer

from bridge.cli import main
from bridge.server import RUNTIME, create_app
from bridge.silences import SilenceRequest
from tests.conftest import FAILED, fixture_body, make_config, signed_headers
from tests.fakes.chat_server import FakeChat
from tests.postgres import fresh_database
from tests.test_admin import (
    TEAM_HOOK,
    Bridge,
    Start,
    bridge_toml,
    settled,
    start,
    visible_text,
)
from tests.test_policy import build_body

__all__ = ["start"]  # the status page's fixture

# The failed sample is build 68 of andy-corp's containers-devel.
TRIGGER = "containers-devel"


def csrf(html: str) -> str:
    match = re.search(r'name="csrf" value="([^"]+)"', html)
    assert match is not None
    return match.group(1)


async def team_chat_state(bridge: Bridge, event_id: int) -> str:
    rows = await settled(
        bridge.store,
        lambda rows: any(
            r.event_id == event_id and r.destination == "team-chat" and r.state != "pending"
            for r in rows
        ),
    )
    [row] = [r for r in rows if r.event_id == event_id and r.destination == "team-chat"]
    return row.state


async def test_a_silence_added_on_the_page_mutes_a_build_until_it_is_expired(
    start: Start, fake_chat: FakeChat
) -> None:
    bridge = await start()
    page = await bridge.page()
    assert "Nothing is muted." in page
    form = {
        "csrf": csrf(page),
        "factory": "andy-*",
        "trigger": "containers-*",
        "destination": "team-chat",
        "for": "2h",
        "comment": "lmp host swap",
        "author": "ana",
    }
    async with bridge.admin.post("/silences", data=form, allow_redirects=False) as response:
        assert response.status == 303
        assert response.headers["Location"].startswith("./?silenced=")

    page = visible_text(await bridge.page("/?silenced=1"))
    assert "Silence 1 is added." in page
    assert "andy-* / containers-* at team-chat" in page and "by ana" in page
    assert "lmp host swap" in page

    muted = await bridge.post_event(fixture_body(FAILED))
    assert await team_chat_state(bridge, muted) == "silenced"
    assert fake_chat.requests_to(TEAM_HOOK) == []
    page = visible_text(await bridge.page())
    assert "silenced by silence 1" in page

    expire = {"csrf": form["csrf"]}
    async with bridge.admin.post(
        "/silences/1/expire", data=expire, allow_redirects=False
    ) as response:
        assert response.status == 303
    assert "Silence 1 expired." in visible_text(await bridge.page("/?expired=1"))
    assert "Nothing is muted." in await bridge.page()

    sent = await bridge.post_event(build_body(69, trigger=TRIGGER))
    assert await team_chat_state(bridge, sent) == "sent"
    assert len(fake_chat.requests_to(TEAM_HOOK)) == 1


@pytest.mark.parametrize(
    "change, headers",
    [
        ({"csrf": "guessed"}, {}),
        ({}, {"Origin": "https://evil.example"}),
    ],
)
async def test_a_silence_form_without_the_pages_token_is_refused(
    start: Start, change: dict[str, str], headers: dict[str, str]
) -> None:
    bridge = await start()
    form = {"csrf": csrf(await bridge.page()), "for": "2h", "comment": "x", **change}
    async with bridge.admin.post("/silences", data=form, headers=headers) as response:
        assert response.status == 403
    assert await bridge.store.silences(None) == []


async def test_the_api_lists_adds_and_expires_silences(start: Start) -> None:
    bridge = await start()
    assert await bridge.api("/api/silences") == {"silences": []}
    asked = {
        "trigger": "containers-*",
        "destination": "team-chat",
        "for": "90m",
        "comment": "flaky runner",
        "author": "bo",
    }
    async with bridge.admin.post("/api/silences", json=asked) as response:
        assert response.status == 201
        added = (await response.json())["silence"]
    assert added["factory"] == "*" and added["trigger"] == "containers-*"
    assert (added["state"], added["author"], added["comment"]) == ("active", "bo", "flaky runner")
    assert added["destination"] == "team-chat"
    [listed] = (await bridge.api("/api/silences"))["silences"]
    assert listed == added

    async with bridge.admin.post(
        f"/api/silences/{added['id']}/expire", headers={"X-Requested-With": "fetch"}
    ) as response:
        assert response.status == 200
        assert (await response.json())["silence"]["state"] == "expired"
    assert await bridge.api("/api/silences") == {"silences": []}
    [kept] = (await bridge.api("/api/silences?all=1"))["silences"]
    assert kept["id"] == added["id"] and kept["state"] == "expired"


@pytest.mark.parametrize(
    "asked, status, says",
    [
        ({"destination": "nowhere"}, 400, "no destination"),
        ({"for": "0s"}, 400, "for"),
        ({"for": "soon"}, 400, "for"),
        ({"comment": ""}, 400, "comment"),
        ({"unknown": 1}, 400, "unknown"),
    ],
)
async def test_the_api_refuses_what_cannot_be_a_silence(
    start: Start, asked: dict[str, object], status: int, says: str
) -> None:
    bridge = await start()
    wanted = {"for": "2h", "comment": "x", **asked}
    async with bridge.admin.post("/api/silences", json=wanted) as response:
        assert response.status == status
        error = (await response.json())["error"]
        assert says in error and "\n" not in error
    assert await bridge.store.silences(None) == []


async def test_the_api_refuses_a_cross_site_post_and_an_unknown_silence(start: Start) -> None:
    bridge = await start()
    async with bridge.admin.post("/api/silences", data="for=2h&comment=x") as response:
        assert response.status == 403
    async with bridge.admin.post(
        "/api/silences", data=b"[1", headers={"X-Requested-With": "x"}
    ) as response:
        assert response.status == 400 and "error" in await response.json()
    async with bridge.admin.post(
        "/api/silences/42/expire", headers={"X-Requested-With": "fetch"}
    ) as response:
        assert response.status == 404 and "error" in await response.json()
    assert await bridge.store.silences(None) == []


def cli(*args: str) -> int:
    return main(list(args))


async def cli_beside(*args: str) -> int:
    """The command in a thread: the bridge it talks to (through the store) runs here."""
    return await asyncio.to_thread(cli, *args)


async def test_a_silence_added_with_the_cli_acts_in_a_running_bridge(
    start: Start, fake_chat: FakeChat, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    bridge = await start()
    config = str(tmp_path / "config.toml")  # the running bridge's
    added = await cli_beside(
        "silence", "add", "--config", config, "--trigger", TRIGGER, "--for", "1h",
        "--comment", "known breakage", "--author", "cy",
    )  # fmt: skip
    assert added == 0
    silence_id = int(capsys.readouterr().out.strip())

    muted = await bridge.post_event(fixture_body(FAILED))
    assert await team_chat_state(bridge, muted) == "silenced"

    assert await cli_beside("silence", "list", "--config", config) == 0
    listed = capsys.readouterr().out
    assert re.search(rf"^\s+{silence_id} active .* {TRIGGER} .* cy +known breakage$", listed, re.M)
    assert await cli_beside("silence", "expire", "--config", config, str(silence_id)) == 0
    assert f"silence {silence_id} expired" in capsys.readouterr().out
    assert await cli_beside("silence", "list", "--config", config) == 0
    assert "known breakage" not in capsys.readouterr().out
    assert await cli_beside("silence", "list", "--config", config, "--all") == 0
    assert "expired" in capsys.readouterr().out

    sent = await bridge.post_event(build_body(69, trigger=TRIGGER))
    assert await team_chat_state(bridge, sent) == "sent"


def test_the_cli_refuses_what_cannot_be_a_silence(
    tmp_path: Path, fake_chat: FakeChat, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "config.toml"
    config.write_text(bridge_toml(fake_chat, ""))
    base = ["silence", "add", "--config", str(config), "--comment", "x"]
    assert cli(*base, "--for", "1h", "--destination", "nowhere") == 2
    assert 'no destination named "nowhere"' in capsys.readouterr().err
    assert cli(*base, "--for", "0s") == 2
    assert "--for: a silence must last some time" in capsys.readouterr().err
    assert cli("silence", "expire", "--config", str(config), "7") == 2
    assert "no silence 7" in capsys.readouterr().err


async def test_silences_in_postgresql_are_shared(tmp_path: Path, fake_chat: FakeChat) -> None:
    """Two bridges on one PostgreSQL store: a silence added through one mutes the other."""

    async with fresh_database() as url:
        toml = bridge_toml(fake_chat, "enabled = false").replace(
            'path = "bridge.sqlite3"', f'url = "{url}"'
        )
        for name in ("one", "two"):
            (tmp_path / name).mkdir()
        configs = [make_config(tmp_path / name, toml) for name in ("one", "two")]
        clients = [TestClient(TestServer(create_app(c))) for c in configs]
        for client in clients:
            await client.start_server()
        try:
            one, two = (client.app[RUNTIME].store for client in clients)
            now = time.time()
            request = {"trigger": TRIGGER, "for": "1h", "comment": "shared", "author": "ana"}
            await one.add_silence(SilenceRequest.model_validate(request).at(now), now)
            data = fixture_body(FAILED)
            response = await clients[1].post("/webhook", data=data, headers=signed_headers(data))
            assert response.status == 202
            rows = await two.list_deliveries(destination="team-chat")
            assert [r.state for r in rows] == ["silenced"]
        finally:
            for client in clients:
                await client.close()
