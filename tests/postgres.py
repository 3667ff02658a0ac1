"""A real PostgreSQL server for the tests: a fresh database per test.

The server is the one BRIDGE_TEST_POSTGRES_URL names (`. .ci/postgres` starts a
throwaway one and sets it; .ci/run does so). Without it the PostgreSQL tests are
skipped, with the reason, except in CI (CI=true), where that is a failure.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

URL_VARIABLE = "BRIDGE_TEST_POSTGRES_URL"
# Set by .ci/postgres: how to restart the throwaway server it started.
PG_CTL_VARIABLE = "BRIDGE_TEST_PG_CTL"
PG_DIR_VARIABLE = "BRIDGE_TEST_PG_DIR"
PG_USER_VARIABLE = "BRIDGE_TEST_PG_USER"


def server_url() -> str:
    """The test server's URL (any database on it that we may create databases from)."""
    url = os.environ.get(URL_VARIABLE)
    if url:
        return url
    if os.environ.get("CI", "").lower() in ("true", "1", "yes"):
        pytest.fail(
            f"CI=true but {URL_VARIABLE} is not set: .ci/run must start PostgreSQL"
            " (. .ci/postgres) before the tests",
            pytrace=False,
        )
    pytest.skip(f"needs PostgreSQL: set {URL_VARIABLE} (`. .ci/postgres` starts a server)")


def with_database(url: str, database: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, f"/{database}", parts.query, ""))


@asynccontextmanager
async def fresh_database() -> AsyncIterator[str]:
    """Create an empty database, yield its URL, drop it afterwards."""
    admin_url = server_url()
    name = f"bridge_test_{uuid.uuid4().hex[:16]}"
    admin = await asyncpg.connect(admin_url)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    try:
        yield with_database(admin_url, name)
    finally:
        admin = await asyncpg.connect(admin_url)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()


def restartable() -> None:
    """Skip the test unless the server is the throwaway one that .ci/postgres started."""
    server_url()
    if not (os.environ.get(PG_CTL_VARIABLE) and os.environ.get(PG_DIR_VARIABLE)):
        pytest.skip(
            f"needs {PG_CTL_VARIABLE} and {PG_DIR_VARIABLE} to restart PostgreSQL"
            " (`. .ci/postgres` sets them for the server it starts)"
        )


async def restart_postgres() -> None:
    """`pg_ctl restart -m fast` on the .ci/postgres server: every connection is cut,
    the server is gone for a moment and comes back with the same data and port."""
    restartable()
    folder = os.environ[PG_DIR_VARIABLE]
    command = [
        os.environ[PG_CTL_VARIABLE],
        f"--pgdata={folder}/data",
        f"--log={folder}/server.log",
        "--mode=fast",
        "--wait",
        "restart",
    ]
    user = os.environ.get(PG_USER_VARIABLE)
    if user:
        command = ["runuser", "-u", user, "--", *command]
    process = await asyncio.create_subprocess_exec(
        *command, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE
    )
    _, error = await process.communicate()
    if process.returncode != 0:
        pytest.fail(f"pg_ctl restart failed ({process.returncode}): {error.decode()}")
