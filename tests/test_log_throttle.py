"""A failure repeated at each poll is logged as news: when it starts, once a while, when over."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from contextlib import closing
from pathlib import Path

import aiohttp
import pytest

from bridge.log_throttle import FailureLog
from bridge.store.sqlite import SqliteStore
from tests.conftest import accept_body, generic_destination
from tests.fakes.chat_server import FakeChat
from tests.test_delivery import (
    build_body,
    config_for,
    dispatching,
    wait_rows,
)

LOGGER = "bridge.test_log_throttle"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def said(caplog: pytest.LogCaptureFixture, level: int) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == level]


def test_one_warning_when_failing_starts_then_one_an_interval_then_recovery(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, LOGGER)
    clock = Clock()
    failures = FailureLog(logging.getLogger(LOGGER), "lane a: store error", 60.0, clock)

    for _ in range(30):  # a poll every second for 30 s
        failures.failed(OSError("disk I/O error\nat\x1b[31m line 2"))
        clock.now += 1.0
    assert said(caplog, logging.WARNING) == [
        "lane a: store error, trying again shortly: OSError: disk I/O error\\nat\\x1b[31m line 2"
    ]
    assert all(r.exc_info is None for r in caplog.records if r.levelno >= logging.INFO)

    for _ in range(40):  # past the minute: said once more, with how often meanwhile
        failures.failed(OSError("disk I/O error"))
        clock.now += 1.0
    warnings = said(caplog, logging.WARNING)
    assert len(warnings) == 2
    assert warnings[1].startswith("lane a: store error, still failing (60 times in 60s)")

    failures.succeeded()
    failures.succeeded()
    assert said(caplog, logging.INFO) == [
        "lane a: store error: recovered after 70 failures in a row"
    ]

    failures.failed(OSError("again"))  # a new failing is news again at once
    assert len(said(caplog, logging.WARNING)) == 3


def test_the_traceback_is_kept_for_debugging(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, LOGGER)
    failures = FailureLog(logging.getLogger(LOGGER), "lane a: store error", 60.0, Clock())
    try:
        raise OSError("disk full")
    except OSError as exc:
        failures.failed(exc)
        failures.failed(exc)
    debug = [r for r in caplog.records if r.levelno == logging.DEBUG]
    assert len(debug) == 2 and all(r.exc_info for r in debug)


def rename_column(database: Path, name: str, new_name: str) -> None:
    with closing(sqlite3.connect(database)) as connection, connection:
        connection.execute(f"ALTER TABLE deliveries RENAME COLUMN {name} TO {new_name}")


async def test_a_lane_says_once_that_the_store_is_down_and_once_that_it_is_back(
    fake_chat: FakeChat,
    tmp_path: Path,
    store: SqliteStore,
    session: aiohttp.ClientSession,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, "bridge.delivery")
    config = config_for(tmp_path, generic_destination(fake_chat, "a"))
    await accept_body(store, build_body(1), ["a"])
    # No claim goes through: a claim reads whom a delivery mentions, and the column is gone
    # (claims are in the serving process's memory: refusing updates would not stop them).
    rename_column(store.path, "mentions", "mentions_away")

    def store_errors(level: int) -> list[logging.LogRecord]:
        return [
            r
            for r in caplog.records
            if r.levelno == level and "lane a: store error" in r.getMessage()
        ]

    async with dispatching(config, store, session):
        await asyncio.sleep(1.0)  # some twenty polls, each failing to claim
        [warning] = store_errors(logging.WARNING)
        assert "no such column" in warning.getMessage()
        assert warning.exc_info is None
        assert not [r for r in caplog.records if r.levelno >= logging.ERROR]

        rename_column(store.path, "mentions_away", "mentions")
        await wait_rows(store, "sent")
        [info] = store_errors(logging.INFO)
        assert "recovered after" in info.getMessage()
    assert len(store_errors(logging.WARNING)) == 1
