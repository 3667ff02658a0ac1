"""A delivery's idempotency key: the same on every try, though its body may differ.

The real app takes a signed webhook and delivers to a fake generic chat (which sends the
key as `Idempotency-Key`); a second fake plays the JobServ API, whose failed-tests lookup
fails the first time, so the first try's message lacks the test names the retry has.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from bridge.server import create_app
from tests.conftest import FAILED, fixture_body
from tests.fakes.chat_server import FakeChat, Reply
from tests.test_failed_tests import (
    RUN_TESTS,
    UNIT_TESTS,
    config_for,
    jobserv_keys,
    post,
    serve_tests,
)

ClientFactory = Callable[[Any], Awaitable[TestClient[Any, Any]]]


@pytest.fixture
async def api() -> AsyncIterator[FakeChat]:
    async with FakeChat() as fake:
        yield fake


async def test_a_retry_sends_the_same_key_though_its_body_changed(
    aiohttp_client: ClientFactory, api: FakeChat, fake_chat: FakeChat, tmp_path: Path
) -> None:
    serve_tests(api, [UNIT_TESTS])
    api.script(RUN_TESTS, Reply(503, "busy"))  # the first lookup fails
    fake_chat.script("/generic", Reply(502, "bad gateway"))  # the first try must be retried
    config = config_for(tmp_path, fake_chat, jobserv_keys(api), destinations=("generic",))
    client = await aiohttp_client(create_app(config))
    await post(client, fixture_body(FAILED))

    first, retried = await fake_chat.wait_for(2, path="/generic")
    assert first.json != retried.json  # the retry names the failed tests
    assert first.headers["Idempotency-Key"] == retried.headers["Idempotency-Key"]
    assert first.headers["Idempotency-Key"].startswith("jobserv-bridge-")
