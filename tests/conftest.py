"""Shared test helpers: the sample webhooks, configs in temporary folders, fake chats."""

from __future__ import annotations

import textwrap
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from bridge.config import Config, parse_config
from bridge.intake import new_event
from bridge.jobserv import parse_build, sign
from bridge.store import Delivery, Plan, Store
from bridge.store.sqlite import SqliteStore
from tests.fakes.chat_server import FakeChat

FIXTURES = Path(__file__).parent / "fixtures"
# The example secret of the Foundries docs; the fixtures' .sig files are signed with it.
SECRET = "UseSomethingGoodHere"
FAILED = "containers-devel-failed"
PASSED = "docs-example-passed"


# Small timings keep the suite fast: the lanes poll often and retry soon.
FAST_DELIVERY = """
[delivery]
retry_initial = "0.05s"
retry_max = "0.2s"
poll_interval = "0.05s"
"""


def jobserv_source(secret: str = SECRET) -> str:
    """The config's [[sources]] entry "jobserv", for every factory."""
    return f"""
[[sources]]
name = "jobserv"
secret = "{secret}"
factories = ["*"]
"""


def quick_settings(secret: str = SECRET) -> str:
    """A half-second shutdown, FAST_DELIVERY and the "jobserv" source."""
    return '[server]\nshutdown_timeout = "0.5s"\n' + FAST_DELIVERY + jobserv_source(secret)


def generic_destination(
    fake: FakeChat,
    name: str,
    extra: str = "",
    timeout: str = "0.5s",
    limits: str = "rate_limit = 0",
) -> str:
    """A generic destination posting to /<name> on the fake, by default without a rate limit."""
    return f"""
[[destinations]]
name = "{name}"
type = "generic"
url = "{fake.url("/" + name)}"
timeout = "{timeout}"
{limits}
{extra}
"""


def fixture_body(name: str) -> bytes:
    return (FIXTURES / f"{name}.json").read_bytes()


def fixture_signature(name: str) -> str:
    return (FIXTURES / f"{name}.sig").read_text().strip()


def signed_headers(body: bytes, secret: str = SECRET) -> dict[str, str]:
    return {"Content-Type": "application/json", "X-JobServ-Sig": sign(secret, body)}


def make_config(folder: Path, toml: str) -> Config:
    """A Config from TOML text, as if read from `folder`/config.toml (store defaults there)."""
    path = folder / "config.toml"
    text = textwrap.dedent(toml)
    path.write_text(text)
    return parse_config(text, path)


@pytest.fixture
async def fake_chat() -> AsyncIterator[FakeChat]:
    async with FakeChat() as fake:
        yield fake


def plan(destinations: list[str]) -> Plan:
    """A store plan that sends to these destinations whatever the build's transition."""
    return lambda _transition: [(name, ()) for name in destinations]


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client:
        yield client


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    """An open SQLite outbox in tmp_path, serving (its lanes may claim)."""
    outbox = SqliteStore(tmp_path / "outbox.sqlite3")
    await outbox.open(serving=True)
    yield outbox
    await outbox.close()


async def accept_body(store: Store, body: bytes, destinations: list[str]) -> None:
    """Store the webhook `body` as the server does, with a delivery to each destination."""
    await store.accept(new_event(parse_build(body), body), plan(destinations))


async def claimed_delivery(store: Store, body: bytes, destination: str) -> Delivery:
    """Store `body` for `destination` alone and claim its delivery, as its lane would."""
    await accept_body(store, body, [destination])
    [delivery] = (await store.claim(destination, time.time(), 10, 60.0)).deliveries
    return delivery
