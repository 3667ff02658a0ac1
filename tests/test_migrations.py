"""One migration scheme over both backends: numbered migrations, the same numbers, a
`schema_version` table; an older store is brought up to date with its data kept.

Real SQLite files and a real PostgreSQL database (a fresh one per test)."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from bridge.store import Store, StoreUnavailable, postgres_schema, sqlite_schema
from bridge.store.postgres import PostgresStore
from bridge.store.sqlite import SqliteStore
from tests.conftest import plan
from tests.postgres import fresh_database
from tests.test_store import LEASE, event, kind

# The first schema's tables, with one failed build's event and its pending delivery.
OLD_EVENT = (
    "INSERT INTO events (key, factory, trigger, build_id, status, body, received_at)"
    " VALUES ('event-old', 'andy-corp', 'platform-devel', 40, 'FAILED', '{}', 1)"
)
OLD_DELIVERY = (
    "INSERT INTO deliveries (event_id, destination, created_at, updated_at, next_attempt_at)"
    " VALUES (1, 'ci-alerts', 1, 1, 1)"
)


def sqlite_at(path: Path, version: int, *, marked: bool = True) -> None:
    """A SQLite file at `version`, with the old event in it; `marked` False: as made before
    `schema_version` existed."""
    with sqlite3.connect(path) as connection:
        for statements in sqlite_schema.MIGRATIONS[:version]:
            for statement in statements:
                connection.execute(statement)
        if marked:
            connection.execute("CREATE TABLE schema_version (version INTEGER PRIMARY KEY,"
                               " applied_at REAL NOT NULL)")  # fmt: skip
            for number in range(1, version + 1):
                connection.execute("INSERT INTO schema_version VALUES (?, 0)", (number,))
        connection.execute(OLD_EVENT)
        connection.execute(OLD_DELIVERY)
    connection.close()


def sqlite_versions(path: Path) -> list[int]:
    with sqlite3.connect(path) as connection:
        rows = connection.execute("SELECT version FROM schema_version ORDER BY 1").fetchall()
    connection.close()
    return [version for (version,) in rows]


async def postgres_at(url: str, version: int) -> None:
    connection = await asyncpg.connect(url)
    try:
        for script in postgres_schema.MIGRATIONS[:version]:
            await connection.execute(script)
        await connection.execute(
            "CREATE TABLE schema_version (version INTEGER PRIMARY KEY,"
            " applied_at TIMESTAMPTZ NOT NULL DEFAULT now())"
        )
        for number in range(1, version + 1):
            await connection.execute("INSERT INTO schema_version (version) VALUES ($1)", number)
        await connection.execute(OLD_EVENT)
        await connection.execute(OLD_DELIVERY)
    finally:
        await connection.close()


async def postgres_versions(url: str) -> list[int]:
    connection = await asyncpg.connect(url)
    try:
        rows = await connection.fetch("SELECT version FROM schema_version ORDER BY 1")
    finally:
        await connection.close()
    return [row["version"] for row in rows]


def test_both_backends_number_the_same_migrations() -> None:
    assert len(sqlite_schema.MIGRATIONS) == len(postgres_schema.MIGRATIONS)


@pytest.fixture(params=["sqlite", "postgres"])
async def old_store(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[tuple[Store, str, Path]]:
    """A store of the first schema's version, with data, and how to read its versions."""
    if request.param == "sqlite":
        path = tmp_path / "outbox.sqlite3"
        sqlite_at(path, 1)
        yield SqliteStore(path), "sqlite", path
        return
    async with fresh_database() as url:
        await postgres_at(url, 1)
        yield PostgresStore(url), url, tmp_path


async def test_a_store_of_the_first_version_is_upgraded_with_its_data(
    old_store: tuple[Store, str, Path],
) -> None:
    store, where, path = old_store
    await store.open(serving=True)
    try:
        [old] = (await store.claim("ci-alerts", time.time(), 32, LEASE)).deliveries
        new = await store.accept(event(41), plan(["ci-alerts"]))
        await store.mark_sent(old.id, time.time())
        counts = await store.counts()
    finally:
        await store.close()
    assert (old.event_id, old.build_id, old.transition, old.mentions) == (1, 40, None, ())
    assert old.event_key == "event-old"
    assert kind(new.transition) == "first_failure"  # the old failure is in no history
    assert counts == {"sent": 1, "pending": 1, "dead": 0}
    versions = sqlite_versions(path) if where == "sqlite" else await postgres_versions(where)
    assert versions == list(range(1, len(sqlite_schema.MIGRATIONS) + 1))


# `schema_version` came after version 5: no file without it is at a later one.
@pytest.mark.parametrize("version", range(1, 6))
async def test_a_sqlite_file_from_before_schema_version_is_marked_and_upgraded(
    tmp_path: Path, version: int
) -> None:
    path = tmp_path / "outbox.sqlite3"
    sqlite_at(path, version, marked=False)
    store = SqliteStore(path)
    await store.open(serving=True)
    try:
        [old] = (await store.claim("ci-alerts", time.time(), 32, LEASE)).deliveries
        await store.accept(event(41), plan(["ci-alerts"]))
    finally:
        await store.close()
    assert old.build_id == 40
    assert sqlite_versions(path) == list(range(1, len(sqlite_schema.MIGRATIONS) + 1))


async def test_a_sqlite_file_part_way_into_version_2_is_completed(tmp_path: Path) -> None:
    """Files before `schema_version` got their columns one open at a time."""
    path = tmp_path / "outbox.sqlite3"
    sqlite_at(path, 1, marked=False)
    with sqlite3.connect(path) as connection:
        connection.execute(sqlite_schema.MIGRATIONS[1][0])  # events.transition only
    connection.close()
    store = SqliteStore(path)
    await store.open(serving=True)
    try:
        [old] = (await store.claim("ci-alerts", time.time(), 32, LEASE)).deliveries
    finally:
        await store.close()
    assert old.mentions == ()
    assert sqlite_versions(path) == list(range(1, len(sqlite_schema.MIGRATIONS) + 1))


async def test_a_new_sqlite_file_is_made_by_the_migrations(tmp_path: Path) -> None:
    path = tmp_path / "outbox.sqlite3"
    store = SqliteStore(path)
    await store.open(serving=False)
    await store.close()
    assert sqlite_versions(path) == list(range(1, len(sqlite_schema.MIGRATIONS) + 1))


async def test_a_sqlite_schema_newer_than_the_bridge_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "outbox.sqlite3"
    sqlite_at(path, len(sqlite_schema.MIGRATIONS))
    with sqlite3.connect(path) as connection:
        connection.execute("INSERT INTO schema_version VALUES (99, 0)")
    connection.close()
    with pytest.raises(StoreUnavailable, match=r"version 99.*upgrade jobserv-bridge"):
        await SqliteStore(path).open(serving=True)
