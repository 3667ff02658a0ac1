"""Shared test helpers: the sample webhooks, configs in temporary folders, fake chats."""

from __future__ import annotations

import textwrap
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bridge.config import Config, parse_config
from bridge.jobserv import sign
from bridge.store import Plan
from tests.fakes.chat_server import FakeChat

FIXTURES = Path(__file__).parent / "fixtures"
# The example secret of the Foundries docs; the fixtures' .sig files are signed with it.
SECRET = "UseSomethingGoodHere"
FAILED = "containers-devel-failed"
PASSED = "docs-example-passed"


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
