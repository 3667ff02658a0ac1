"""Quick tests of the FakeChat test double itself."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import aiohttp
import pytest
from slack_sdk.errors import SlackApiError as SlackSdkApiError
from slack_sdk.web.async_client import AsyncWebClient
from slack_sdk.webhook.async_client import AsyncWebhookClient

from .chat_server import (
    Delay,
    FakeChat,
    Hang,
    RateLimited,
    Reply,
    Reset,
    SlackApiError,
    SlackApiOk,
    slack_webhook_limit,
)


@pytest.fixture
async def fake() -> AsyncIterator[FakeChat]:
    async with FakeChat() as server:
        yield server


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client:
        yield client


async def test_records_requests_and_defaults_to_ok(
    fake: FakeChat, session: aiohttp.ClientSession
) -> None:
    assert fake.base_url.startswith("http://127.0.0.1:")
    async with session.post(fake.url("/hook?x=1"), json={"text": "hi"}) as resp:
        assert (resp.status, await resp.text()) == (200, "ok")
    async with session.put(fake.url("other"), data={"a": "1", "b": ""}) as resp:
        assert resp.status == 200

    first, second = fake.requests
    assert (first.method, first.path, first.query) == ("POST", "/hook", {"x": "1"})
    assert first.json == {"text": "hi"}
    assert first.headers["content-type"] == "application/json"
    assert (second.method, second.path, second.json) == ("PUT", "/other", {"a": "1", "b": ""})
    assert first.received_at <= second.received_at
    assert fake.requests_to("/other") == [second]


async def test_script_queue_then_defaults(fake: FakeChat, session: aiohttp.ClientSession) -> None:
    fake.script("/x", Reply(500, "boom"), Reply(201, json={"n": 1}))
    fake.default("/x", Reply(202, "later"))
    fake.default(None, Reply(404, "nope"))

    answers = []
    for path in ["/x", "/x", "/x", "/y"]:
        async with session.post(fake.url(path)) as resp:
            answers.append((resp.status, await resp.text()))
    assert answers == [(500, "boom"), (201, '{"n": 1}'), (202, "later"), (404, "nope")]


async def test_429_with_retry_after(fake: FakeChat, session: aiohttp.ClientSession) -> None:
    fake.script("/hook", Reply(429, "slow down", headers={"Retry-After": "2"}))
    async with session.post(fake.url("/hook")) as resp:
        assert resp.status == 429
        assert resp.headers["Retry-After"] == "2"


async def test_hang_times_out_but_is_recorded(
    fake: FakeChat, session: aiohttp.ClientSession
) -> None:
    fake.script("/hook", Hang())
    with pytest.raises(asyncio.TimeoutError):
        async with session.post(
            fake.url("/hook"), json={}, timeout=aiohttp.ClientTimeout(total=0.5)
        ):
            pass
    assert len(fake.requests_to("/hook")) == 1
    started = time.monotonic()
    await fake.stop()
    assert time.monotonic() - started < 1.5


async def test_hang_is_visible_before_it_ends(fake: FakeChat) -> None:
    fake.default(None, Hang())
    async with aiohttp.ClientSession() as client:
        pending = asyncio.create_task(client.post(fake.url("/slow"), data=b"x"))
        [req] = await fake.wait_for(1, path="/slow", timeout=2)
        assert req.body == b"x"
        await fake.stop()  # releases the hang: the client sees a disconnect
        with pytest.raises(aiohttp.ClientConnectionError):
            await pending


async def test_reset_gives_connection_error(fake: FakeChat, session: aiohttp.ClientSession) -> None:
    fake.script("/hook", Reset())
    with pytest.raises(aiohttp.ClientConnectionError):
        async with session.post(fake.url("/hook"), json={"text": "hi"}) as resp:
            await resp.read()
    assert len(fake.requests_to("/hook")) == 1
    async with session.post(fake.url("/hook")) as resp:  # server still fine
        assert resp.status == 200


async def test_delay_then_reply(fake: FakeChat, session: aiohttp.ClientSession) -> None:
    fake.script("/hook", Delay(0.2, then=Reply(503, "busy")))
    started = time.monotonic()
    async with session.post(fake.url("/hook")) as resp:
        assert (resp.status, await resp.text()) == (503, "busy")
    assert time.monotonic() - started >= 0.2


async def test_wait_for_timeout_is_an_assertion(fake: FakeChat) -> None:
    with pytest.raises(AssertionError, match=r"expected >= 1 request\(s\) to /nope"):
        await fake.wait_for(1, timeout=0.05, path="/nope")


async def test_slack_webhook_client(fake: FakeChat) -> None:
    client = AsyncWebhookClient(url=fake.url("/services/T/B/X"), retry_handlers=[])
    resp = await client.send_dict({"text": "hi"})
    assert (resp.status_code, resp.body) == (200, "ok")
    [req] = await fake.wait_for(1, path="/services/T/B/X")
    assert req.method == "POST"
    assert req.json == {"text": "hi"}


async def test_slack_web_client_post_message(fake: FakeChat) -> None:
    fake.default("/api/chat.postMessage", SlackApiOk())
    client = AsyncWebClient(token="xoxb-test", base_url=fake.url("/api/"), retry_handlers=[])
    first = await client.chat_postMessage(channel="C1", text="hi")
    second = await client.chat_postMessage(channel="C1", text="again")
    assert first["ok"] is True
    assert first["ts"] == "1700000000.000100"
    assert second["ts"] == "1700000000.000200"

    req = fake.requests_to("/api/chat.postMessage")[0]
    assert req.headers["Authorization"] == "Bearer xoxb-test"
    assert req.json is not None
    assert (req.json["channel"], req.json["text"]) == ("C1", "hi")


async def test_slack_web_client_errors(fake: FakeChat) -> None:
    fake.script(
        "/api/chat.postMessage",
        SlackApiError("channel_not_found"),
        SlackApiError("ratelimited", status=429, headers={"Retry-After": "3"}),
    )
    client = AsyncWebClient(token="xoxb-test", base_url=fake.url("/api/"), retry_handlers=[])
    with pytest.raises(SlackSdkApiError) as not_found:
        await client.chat_postMessage(channel="C1", text="hi")
    assert not_found.value.response["error"] == "channel_not_found"
    with pytest.raises(SlackSdkApiError) as limited:
        await client.chat_postMessage(channel="C1", text="hi")
    assert limited.value.response.status_code == 429
    assert limited.value.response.headers["Retry-After"] == "3"


async def test_a_rate_limit_answers_429_past_its_burst_then_lets_one_through_a_second(
    fake: FakeChat, session: aiohttp.ClientSession
) -> None:
    fake.default("/hook", RateLimited(rate=2.0, burst=2, then=Reply(200, "ok")))

    async def post() -> tuple[int, str | None]:
        async with session.post(fake.url("/hook"), json={"text": "hi"}) as resp:
            return resp.status, resp.headers.get("Retry-After")

    assert [await post() for _ in range(3)] == [(200, None), (200, None), (429, "1")]
    await fake.wait_until(lambda chat: len(chat.answered) == 3)
    assert len(fake.delivered("/hook")) == 2
    await asyncio.sleep(0.6)  # a token back (2 a second), with room for a busy machine
    assert (await post())[0] == 200
    assert len(fake.delivered()) == 3
    assert fake.requests_to("/other") == [] and fake.delivered("/other") == []


async def test_slacks_webhook_limit_lets_a_burst_through_and_no_more(
    fake: FakeChat, session: aiohttp.ClientSession
) -> None:
    fake.default("/hook", slack_webhook_limit())
    statuses = []
    for _ in range(6):
        async with session.post(fake.url("/hook"), json={"text": "hi"}) as resp:
            statuses.append(resp.status)
            if resp.status == 429:
                assert resp.headers["Retry-After"] == "1"
                assert await resp.text() == "rate_limited"
    # Six requests at once on a 1/s limit: the burst and at most one refilled token pass.
    assert statuses[:3] == [200, 200, 200]
    assert statuses.count(429) >= 2
