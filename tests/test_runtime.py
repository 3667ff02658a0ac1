"""The runtime opens the store, session, fetcher, lanes and admin listener in order, and
closes in reverse what it opened, also when opening fails part-way."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from bridge.runtime import Runtime
from bridge.store import StoreUnavailable, open_store
from tests.conftest import generic_destination, make_config, quick_settings
from tests.fakes.chat_server import FakeChat


async def test_a_start_failing_part_way_closes_what_it_opened(
    tmp_path: Path, fake_chat: FakeChat
) -> None:
    routes = '[[routes]]\ndestinations = ["hook"]\n'
    config = make_config(
        tmp_path, quick_settings() + generic_destination(fake_chat, "hook") + routes
    )

    async def start_off_the_main_thread() -> Runtime:
        runtime = Runtime(config)
        # The last step, the SIGHUP handler, can only be set on the main thread: it fails
        # after the store, session, fetcher and lanes were opened.
        with pytest.raises(RuntimeError):
            await runtime.start()
        return runtime

    runtime = await asyncio.to_thread(asyncio.run, start_off_the_main_thread())

    # The store was closed: its file is free for another serving process.
    store = open_store(config.store)
    try:
        await store.open(serving=True)
    except StoreUnavailable as exc:
        pytest.fail(f"the failed start left the store open: {exc}")
    finally:
        await store.close()
    assert runtime.session.closed


async def test_stop_closes_the_store_and_the_session(tmp_path: Path, fake_chat: FakeChat) -> None:
    routes = '[[routes]]\ndestinations = ["hook"]\n'
    config = make_config(
        tmp_path, quick_settings() + generic_destination(fake_chat, "hook") + routes
    )
    runtime = Runtime(config)
    await runtime.start()
    assert not runtime.session.closed
    await runtime.stop()
    assert runtime.session.closed
    store = open_store(config.store)
    await store.open(serving=True)  # free again
    await store.close()
