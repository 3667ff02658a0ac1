"""Secrets a chat echoes back in another form never reach the logs, the outbox or the page.

A `serve` process posts to generic destinations whose fake chat answers 400 with the
request's own secrets written back: the webhook URL JSON-escaped (`http:\\/\\/...`),
percent-encoded, long enough to be cut, cut by the chat itself, and the bare token of
the `Authorization = "Bearer X"` header. Then the logs (human and JSON), `outbox list
--dead`, the status page and its `/api/dead` and `/api/events` are searched for any
piece of them.
"""

from __future__ import annotations

import asyncio
import json
import signal
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import pytest

from tests.conftest import SECRET, jobserv_source
from tests.fakes.chat_server import Echo, FakeChat, RecordedRequest
from tests.serve import BridgeProcess, free_port, run_cli

TOKEN = "HeaderTokenSecret-0d4e5f"
# Pieces of every destination's URL path and of the token: no log line or page may
# hold any of them. (A cut may leave a few first characters of a whole URL, which
# are the chat's address, not its secret.)
SECRET_PIECES = ("UrlPath", "7c1d9e2b", "HeaderToken", "0d4e5f")
# "HTTP 400: " starts a 400 answer's reason, which the bridge kept to 200 characters.
REASON_START = len("HTTP 400: ")
KEPT_REASON = 199


def hook_path(form: str) -> str:
    return f"/hooks/{form}/UrlPathSecret-{form}-7c1d9e2b"


def cut_inside_the_secret(fake: FakeChat) -> Callable[[RecordedRequest], str]:
    """An answer long enough that a cut at the reason's limit falls inside the URL's secret."""

    def text(request: RecordedRequest) -> str:
        url = fake.url(request.path)
        cut_at = url.index("UrlPath") + len("UrlPathSecret")
        return "x" * (KEPT_REASON - REASON_START - 1 - cut_at) + f" {url} is unknown"

    return text


def echoing_forms(fake: FakeChat) -> dict[str, Callable[[RecordedRequest], str]]:
    """Each destination's chat writes its URL or token back in one form."""

    def url(request: RecordedRequest) -> str:
        return fake.url(request.path)

    def token(request: RecordedRequest) -> str:
        return request.headers["Authorization"].split()[1]

    return {
        "json": lambda r: json.dumps({"error": f"no hook {url(r)}"}).replace("/", "\\/"),
        "percent": lambda r: f"see /login?next={quote(url(r), safe='')}&t={quote(token(r))}",
        "long": cut_inside_the_secret(fake),
        "chatcut": lambda r: f"POST {url(r)[:-5]}…",
        "token": lambda r: f'{{"error": "invalid_auth", "token": "{token(r)}"}}',
        "raw": lambda r: f"no hook at {url(r)} for {request_auth(r)}",
    }


def request_auth(request: RecordedRequest) -> str:
    return request.headers["Authorization"]


def write_config(bridge: BridgeProcess, admin_port: int, fake: FakeChat, forms: list[str]) -> None:
    destinations = "".join(
        f"""
        [[destinations]]
        name = "echo-{form}"
        type = "generic"
        url = "{fake.url(hook_path(form))}"
        headers = {{ Authorization = "Bearer {TOKEN}" }}
        timeout = "0.5s"
        rate_limit = 0
        """
        for form in forms
    )
    names = ", ".join(f'"echo-{form}"' for form in forms)
    text = f"""
        [server]
        host = "127.0.0.1"
        port = {bridge.port}
        shutdown_timeout = "2s"

        [store]
        path = "bridge.sqlite3"

        [delivery]
        retry_initial = "0.05s"
        retry_max = "0.2s"
        poll_interval = "0.05s"

        [admin]
        port = {admin_port}
        {jobserv_source()}
        {destinations}
        [[routes]]
        notify = ["failed", "passed"]
        destinations = [{names}]
        """
    bridge.config.write_text(text)


@pytest.fixture
async def echoed(fake_chat: FakeChat, tmp_path: Path) -> AsyncIterator[Any]:
    """Runs a bridge with these serve arguments until every delivery is dead; returns
    (bridge, admin URL, number of deliveries) with the bridge still running."""
    made: list[BridgeProcess] = []

    async def run(*args: str) -> tuple[BridgeProcess, str, int]:
        forms = echoing_forms(fake_chat)
        for form, text in forms.items():
            fake_chat.default(hook_path(form), Echo(400, text))
        bridge = BridgeProcess(tmp_path / "config.toml", free_port(), tmp_path, args)
        made.append(bridge)
        admin_port = free_port()
        write_config(bridge, admin_port, fake_chat, list(forms))
        await bridge.start()
        await bridge.accept(1)
        admin = f"http://127.0.0.1:{admin_port}"
        await all_dead(bridge.session, admin, len(forms))
        return bridge, admin, len(forms)

    yield run
    for bridge in made:
        await bridge.close()


async def all_dead(session: aiohttp.ClientSession, admin: str, count: int) -> None:
    deadline = time.monotonic() + 10.0
    while True:
        async with session.get(f"{admin}/api/dead") as response:
            if response.status == 200 and len((await response.json())["deliveries"]) == count:
                return
        assert time.monotonic() < deadline, "the deliveries did not all die"
        await asyncio.sleep(0.05)


def assert_no_piece(where: str, text: str) -> None:
    for piece in SECRET_PIECES:
        assert piece not in text, f"{piece!r} in {where}:\n{text}"


@pytest.mark.parametrize("log_format", ["human", "json"])
async def test_echoed_secrets_reach_no_log_outbox_listing_or_status_page(
    log_format: str, echoed: Any
) -> None:
    bridge, admin, count = await echoed("--log-format", log_format)

    outputs: dict[str, str] = {}
    for path in ("/", "/api/dead", "/api/events", "/api/deliveries"):
        async with bridge.session.get(f"{admin}{path}") as response:
            assert response.status == 200
            outputs[path] = await response.text()
    listing = run_cli("outbox", "--config", bridge.config, "list", "--dead")
    assert listing.returncode == 0, listing.stderr
    outputs["outbox list --dead"] = listing.stdout + listing.stderr
    bridge.send_signal(signal.SIGTERM)
    assert await bridge.wait_exit(timeout=10.0) == 0
    outputs["serve's log"] = bridge.stdout() + bridge.stderr()

    for where, text in outputs.items():
        assert_no_piece(where, text)
    # The chats did echo, and what they said is still shown, redacted.
    errors = [d["last_error"] for d in json.loads(outputs["/api/dead"])["deliveries"]]
    assert len(errors) == count
    assert all(e.startswith("HTTP 400: ") and "<redacted>" in e for e in errors), errors
    assert all(len(e) <= KEPT_REASON + 1 for e in errors), errors
    assert outputs["outbox list --dead"].count("<redacted>") >= len(errors)
    assert "<redacted>" in outputs["serve's log"]
    assert SECRET not in "".join(outputs.values())
