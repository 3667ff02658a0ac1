"""Every HTTP answer of POST /webhook, /healthz, and a delivery end to end to a fake Slack."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from pytest_aiohttp import AiohttpClient

from bridge.jobserv import sign
from bridge.server import RUNTIME, create_app
from bridge.store import DeliveryRow, Store
from tests.conftest import (
    FAILED,
    PASSED,
    SECRET,
    fixture_body,
    fixture_signature,
    make_config,
    signed_headers,
)
from tests.fakes.chat_server import FakeChat

Client = TestClient[web.Request, web.Application]

MAX_BODY = 262_144
OTHER_SECRET = "public-lmp-secret"

TIMINGS = """
[delivery]
retry_initial = "0.05s"
retry_max = "0.2s"
poll_interval = "0.05s"
"""

# Two sources: the docs secret speaks for andy-corp, another one for the public LmP.
SOURCES = f"""
[[sources]]
name = "docs"
secret = "{SECRET}"
factories = ["andy-corp"]

[[sources]]
name = "public"
secret = "{OTHER_SECRET}"
factories = ["lmp"]
"""

CONSOLE_EVERYTHING = """
[[destinations]]
name = "log"
type = "console"

[[routes]]
notify = ["failed", "passed"]
destinations = ["log"]
"""


def bridge_toml(rest: str, sources: str = SOURCES) -> str:
    return f"""
[server]
max_body_size = {MAX_BODY}

[store]
path = "bridge.sqlite3"

# The status page has its own listener; these tests do not need it.
[admin]
enabled = false
{TIMINGS}
{sources}
{rest}
"""


async def start(aiohttp_client: AiohttpClient, tmp_path: Path, rest: str, **kw: str) -> Client:
    config = make_config(tmp_path, bridge_toml(rest, **kw))
    return await aiohttp_client(create_app(config))


@pytest.fixture
async def client(aiohttp_client: AiohttpClient, tmp_path: Path) -> Client:
    return await start(aiohttp_client, tmp_path, CONSOLE_EVERYTHING)


def store_of(client: Client) -> Store:
    return client.app[RUNTIME].store


async def stored(client: Client) -> list[DeliveryRow]:
    return await store_of(client).list_deliveries(limit=1000)


async def post(client: Client, body: bytes, headers: dict[str, str]) -> tuple[int, Any]:
    async with client.post("/webhook", data=body, headers=headers) as response:
        assert response.content_type == "application/json"
        return response.status, await response.json()


def assert_error(status: int, answer: Any, expected: int) -> str:
    """An error answer: the expected status, JSON with a one-line human-readable `error`."""
    assert status == expected, answer
    assert isinstance(answer, dict)
    error = answer["error"]
    assert isinstance(error, str)
    assert error.strip()
    assert "\n" not in error
    return error


def with_changes(name: str, **changes: Any) -> bytes:
    data = json.loads(fixture_body(name))
    data.update(changes)
    return json.dumps(data).encode()


# -- 202 and 200 ------------------------------------------------------------------------


@pytest.mark.parametrize("name", [FAILED, PASSED])
async def test_jobserv_fixture_is_accepted_and_stored(client: Client, name: str) -> None:
    headers = {"Content-Type": "application/json", "X-JobServ-Sig": fixture_signature(name)}

    status, answer = await post(client, fixture_body(name), headers)

    assert status == 202
    assert answer == {"event_id": answer["event_id"], "deliveries": 1}
    assert isinstance(answer["event_id"], int)
    [row] = await stored(client)
    build = json.loads(fixture_body(name))
    assert (row.event_id, row.destination) == (answer["event_id"], "log")
    assert (row.factory, row.trigger, row.build_id, row.status) == (
        "andy-corp",
        "containers-devel",
        build["build_id"],
        build["status"],
    )


async def test_repeat_is_200_and_stores_nothing_new(client: Client) -> None:
    body = fixture_body(FAILED)
    first_status, first = await post(client, body, signed_headers(body))
    before = await stored(client)

    second_status, second = await post(client, body, signed_headers(body))

    assert (first_status, second_status) == (202, 200)
    assert (second["event_id"], second["deliveries"]) == (first["event_id"], first["deliveries"])
    assert [row.id for row in await stored(client)] == [row.id for row in before]


@pytest.mark.parametrize(
    "variant",
    [
        lambda hexdigest: f"sha256: {hexdigest}",
        lambda hexdigest: f"sha256:{hexdigest.upper()}",
    ],
    ids=["space-after-colon", "upper-case-hex"],
)
async def test_repeat_with_another_signature_spelling_is_still_a_repeat(
    client: Client, variant: Any
) -> None:
    body = fixture_body(FAILED)
    hexdigest = fixture_signature(FAILED).removeprefix("sha256:")
    first_status, first = await post(client, body, signed_headers(body))

    status, answer = await post(client, body, {"X-JobServ-Sig": variant(hexdigest)})
    again_status, again = await post(client, body, {"X-JobServ-Sig": variant(hexdigest)})

    assert (first_status, status, again_status) == (202, 200, 200)
    assert answer["event_id"] == again["event_id"] == first["event_id"]
    assert len(await stored(client)) == 1


async def test_a_rerun_with_another_outcome_is_a_new_event(client: Client) -> None:
    failed = fixture_body(FAILED)
    rerun = with_changes(FAILED, status="PASSED", completed="2021-07-27T10:11:12.345678+00:00")

    first_status, first = await post(client, failed, signed_headers(failed))
    status, answer = await post(client, rerun, signed_headers(rerun))

    assert (first_status, status) == (202, 202)
    assert answer["event_id"] != first["event_id"]
    assert sorted(row.status for row in await stored(client)) == ["FAILED", "PASSED"]


async def test_event_routed_nowhere_is_stored(
    aiohttp_client: AiohttpClient, tmp_path: Path
) -> None:
    client = await start(
        aiohttp_client,
        tmp_path,
        """
        [[destinations]]
        name = "log"
        type = "console"

        [[routes]]
        factories = ["someone-else"]
        destinations = ["log"]
        """,
    )
    body = fixture_body(FAILED)

    status, answer = await post(client, body, signed_headers(body))
    repeat_status, repeat = await post(client, body, signed_headers(body))

    assert (status, answer["deliveries"]) == (202, 0)
    # The store knows the event: a repeat is recognised rather than accepted anew.
    assert (repeat_status, repeat["event_id"], repeat["deliveries"]) == (
        200,
        answer["event_id"],
        0,
    )
    assert await stored(client) == []


async def test_fan_out_gives_one_delivery_per_destination(
    aiohttp_client: AiohttpClient, tmp_path: Path
) -> None:
    client = await start(
        aiohttp_client,
        tmp_path,
        """
        [[destinations]]
        name = "log"
        type = "console"

        [[destinations]]
        name = "audit"
        type = "console"

        [[destinations]]
        name = "unused"
        type = "console"

        [[routes]]
        factories = ["andy-*"]
        destinations = ["log"]

        [[routes]]
        triggers = ["containers-*"]
        destinations = ["audit", "log"]

        [[routes]]
        notify = ["passed"]
        destinations = ["unused"]
        """,
    )
    body = fixture_body(FAILED)

    status, answer = await post(client, body, signed_headers(body))

    assert (status, answer["deliveries"]) == (202, 2)
    rows = await stored(client)
    assert sorted(row.destination for row in rows) == ["audit", "log"]
    assert {row.event_id for row in rows} == {answer["event_id"]}


# -- 401 ------------------------------------------------------------------------------------


async def test_missing_signature_is_401(client: Client) -> None:
    body = fixture_body(FAILED)

    status, answer = await post(client, body, {"Content-Type": "application/json"})

    assert "X-JobServ-Sig" in assert_error(status, answer, 401)
    assert await stored(client) == []


@pytest.mark.parametrize(
    "header",
    [
        "",
        "garbage",
        "sha1:" + "0" * 40,
        fixture_signature(FAILED).removeprefix("sha256:"),
        fixture_signature(FAILED)[:-1],
        fixture_signature(FAILED).replace("sha256:", "sha256="),
    ],
    ids=["empty", "garbage", "sha1", "no-prefix", "short-hex", "equals"],
)
async def test_malformed_signature_is_401(client: Client, header: str) -> None:
    body = fixture_body(FAILED)

    status, answer = await post(client, body, {"X-JobServ-Sig": header})

    assert_error(status, answer, 401)
    assert await stored(client) == []


async def test_wrong_signatures_are_401(client: Client) -> None:
    body = fixture_body(FAILED)
    other_fixture = fixture_signature(PASSED)
    unknown_secret = sign("not-a-configured-secret", body)
    tampered = body.replace(b"bump to test webhooks", b"bump to test webhookz")

    for header_body, header in [
        (body, other_fixture),
        (body, unknown_secret),
        (body, "sha256:" + "0" * 64),
        (tampered, fixture_signature(FAILED)),
    ]:
        status, answer = await post(client, header_body, {"X-JobServ-Sig": header})
        assert_error(status, answer, 401)

    assert await stored(client) == []


# -- 403 ------------------------------------------------------------------------------------


async def test_source_may_not_speak_for_another_factory(client: Client) -> None:
    body = fixture_body(FAILED)

    status, answer = await post(client, body, signed_headers(body, OTHER_SECRET))

    error = assert_error(status, answer, 403)
    assert "andy-corp" in error
    assert "public" in error
    assert await stored(client) == []


async def test_each_source_speaks_for_its_own_factory(client: Client) -> None:
    public = with_changes(
        FAILED,
        url="https://api.foundries.io/projects/lmp/builds/2225/",
        web_url="https://ci.foundries.io/projects/lmp/builds/2225",
    )

    refused_status, refused = await post(client, public, signed_headers(public, SECRET))
    status, answer = await post(client, public, signed_headers(public, OTHER_SECRET))

    assert_error(refused_status, refused, 403)
    assert (status, answer["deliveries"]) == (202, 1)
    [row] = await stored(client)
    assert row.factory == "lmp"


async def test_star_lets_a_source_speak_for_any_factory(
    aiohttp_client: AiohttpClient, tmp_path: Path
) -> None:
    sources = f"""
    [[sources]]
    name = "anything"
    secret = "{SECRET}"
    factories = ["*"]
    """
    client = await start(aiohttp_client, tmp_path, CONSOLE_EVERYTHING, sources=sources)
    andy = fixture_body(FAILED)
    other = with_changes(FAILED, url="https://api.foundries.io/projects/zeta/lmp/builds/9/")

    assert (await post(client, andy, signed_headers(andy)))[0] == 202
    assert (await post(client, other, signed_headers(other)))[0] == 202
    assert sorted(row.factory for row in await stored(client)) == ["andy-corp", "zeta"]


# -- 413 ------------------------------------------------------------------------------------


async def test_body_over_the_limit_with_content_length_is_413(client: Client) -> None:
    body = fixture_body(FAILED)[:-1] + b', "padding": "' + b"x" * MAX_BODY + b'"}'

    status, answer = await post(client, body, signed_headers(body))

    assert str(MAX_BODY) in assert_error(status, answer, 413)
    assert await stored(client) == []


async def test_body_over_the_limit_chunked_is_413(client: Client) -> None:
    chunk = b"x" * 16_384

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(MAX_BODY // len(chunk) + 2):
            yield chunk

    async with client.post(
        "/webhook", data=chunks(), headers={"X-JobServ-Sig": "sha256:" + "0" * 64}
    ) as response:
        assert response.content_type == "application/json"
        assert_error(response.status, await response.json(), 413)
    assert await stored(client) == []


async def test_body_at_the_limit_is_read(client: Client) -> None:
    body = b" " * MAX_BODY

    status, answer = await post(client, body, signed_headers(body))

    # Not refused for its size: it is read, verified, and found not to be a build.
    assert_error(status, answer, 400)


# -- 400 ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        b"this is not json",
        b"",
        b"\xff\xfe\x00",
        b"[]",
        b'{"hello": "world"}',
        b'{"build_id": 1}',
        b"[" * 100_000 + b"]" * 100_000,
        b'{"a": ' * 30_000 + b"1" + b"}" * 30_000,
        with_changes(FAILED, build_id=10**30),
        with_changes(FAILED, runs="none"),
        with_changes(FAILED, url="http://[::1", web_url=None),
        with_changes(FAILED, url="https://example.com/x", web_url="https://example.com/y"),
    ],
    ids=[
        "text",
        "empty",
        "bad-utf8",
        "list",
        "object",
        "partial",
        "nested-lists",
        "nested-objects",
        "huge-build-id",
        "runs-not-a-list",
        "broken-url",
        "no-factory",
    ],
)
async def test_signed_body_that_is_not_a_build_is_400(client: Client, body: bytes) -> None:
    status, answer = await post(client, body, signed_headers(body))

    assert_error(status, answer, 400)
    assert await stored(client) == []


@pytest.mark.parametrize(
    "changes",
    [
        {"url": "https://example.com/" + "x" * 100_000, "web_url": None},
        {"url": "https://example.com/\x1b[31m\r\u2028" + "y" * 5000, "web_url": None},
    ],
    ids=["long-url", "controls-in-url"],
)
async def test_a_400_quotes_a_bounded_line_of_the_body(
    client: Client, changes: dict[str, Any]
) -> None:
    """An error quotes little of what it refuses: not a body's URL at any length."""
    body = with_changes(FAILED, **changes)
    status, answer = await post(client, body, signed_headers(body))

    error = assert_error(status, answer, 400)
    assert len(error) <= 200
    assert not any(ord(c) < 0x20 or 0x7F <= ord(c) < 0xA0 or c == "\u2028" for c in error)


async def test_an_unsigned_non_build_is_401_not_400(client: Client) -> None:
    body = b"this is not json"

    status, answer = await post(client, body, {"X-JobServ-Sig": "sha256:" + "a" * 64})

    assert_error(status, answer, 401)


# -- other paths ----------------------------------------------------------------------------


async def test_healthz(client: Client) -> None:
    async with client.get("/healthz") as response:
        assert response.status == 200


async def test_unknown_path_is_a_json_404(client: Client) -> None:
    async with client.post("/nowhere", data=b"{}") as response:
        assert response.content_type == "application/json"
        assert_error(response.status, await response.json(), 404)


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE"])
async def test_wrong_method_is_a_json_405(client: Client, method: str) -> None:
    async with client.request(method, "/webhook") as response:
        assert response.content_type == "application/json"
        assert_error(response.status, await response.json(), 405)


# -- end to end to a Slack webhook ------------------------------------------------------------


async def test_failed_build_reaches_a_slack_webhook(
    aiohttp_client: AiohttpClient, tmp_path: Path, fake_chat: FakeChat
) -> None:
    hook = "/services/T000/B000/XXXX"
    client = await start(
        aiohttp_client,
        tmp_path,
        f"""
        [[destinations]]
        name = "ci-alerts"
        type = "slack-webhook"
        url = "{fake_chat.url(hook)}"
        timeout = "0.5s"

        [[routes]]
        factories = ["andy-corp"]
        triggers = ["containers-*"]
        destinations = ["ci-alerts"]
        """,
    )
    body = fixture_body(FAILED)

    status, answer = await post(client, body, signed_headers(body))
    [request] = await fake_chat.wait_for(1, path=hook)

    assert (status, answer["deliveries"]) == (202, 1)
    assert request.method == "POST"
    message = request.json
    assert isinstance(message, dict)
    assert "andy-corp" in message["text"]
    assert "FAILED" in message["text"]
    assert isinstance(message["blocks"], list)
    assert message["blocks"]
    blocks = json.dumps(message["blocks"])
    assert "https://ci.foundries.io/projects/andy-corp/lmp/builds/68" in blocks
    assert "https://ci.foundries.io/projects/andy-corp/lmp/builds/68/build-armhf/" in blocks
    assert (
        "https://api.foundries.io/projects/andy-corp/lmp/builds/68/runs/build-armhf/console.log"
        in blocks
    )
    # Only the failed run is listed.
    assert "build-aarch64/" not in blocks
    [row] = await wait_for_state(client, "sent")
    assert row.attempts == 1


async def test_passed_build_is_not_announced_to_a_failures_only_route(
    aiohttp_client: AiohttpClient, tmp_path: Path, fake_chat: FakeChat
) -> None:
    hook = "/services/T000/B000/XXXX"
    client = await start(
        aiohttp_client,
        tmp_path,
        f"""
        [[destinations]]
        name = "ci-alerts"
        type = "slack-webhook"
        url = "{fake_chat.url(hook)}"

        [[routes]]
        destinations = ["ci-alerts"]
        """,
    )
    passed = fixture_body(PASSED)
    failed = fixture_body(FAILED)

    passed_answer = await post(client, passed, signed_headers(passed))
    failed_answer = await post(client, failed, signed_headers(failed))
    [request] = await fake_chat.wait_for(1, path=hook)

    assert passed_answer[0] == failed_answer[0] == 202
    assert (passed_answer[1]["deliveries"], failed_answer[1]["deliveries"]) == (0, 1)
    assert "#68" in request.json["text"]
    await wait_for_state(client, "sent")
    assert len(fake_chat.requests) == 1


async def wait_for_state(client: Client, state: str) -> list[DeliveryRow]:
    """Poll the store until every delivery is in `state`; fail after a few seconds."""
    deadline = time.monotonic() + 5.0
    while True:
        rows = await stored(client)
        if rows and all(row.state == state for row in rows):
            return rows
        assert time.monotonic() < deadline, f"deliveries not {state}: {rows}"
        await asyncio.sleep(0.02)
