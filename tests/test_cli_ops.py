"""The operator's commands: routes, send-test, --version, and what check-config checks."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from bridge import __version__
from bridge.config import load_config
from bridge.server import RUNTIME, create_app
from tests.conftest import FAILED, FIXTURES, PASSED, SECRET
from tests.fakes.chat_server import FakeChat
from tests.serve import free_port, run_cli
from tests.test_cli import assert_one_line_error, write

Client = TestClient[Any, Any]
ClientFactory = Callable[[Any], Awaitable[Client]]
SECRET_VARIABLE = "BRIDGE_TEST_WEBHOOK_SECRET"


# --- routes -----------------------------------------------------------------------

ROUTES_CONFIG = f"""
    [[sources]]
    name = "docs-example"
    secret = "{SECRET}"
    factories = ["*"]

    [[destinations]]
    name = "audit"
    type = "console"

    [[destinations]]
    name = "ci-alerts"
    type = "console"

    [[destinations]]
    name = "platform-team"
    type = "console"

    [[destinations]]
    name = "other-corp"
    type = "console"

    [[routes]]
    factories = ["other-*"]
    destinations = ["other-corp"]

    [[routes]]
    triggers = ["platform-*"]
    notify = ["failed", "passed"]
    destinations = ["platform-team"]

    [[routes]]
    notify = ["failed"]
    destinations = ["ci-alerts", "audit"]

    [[routes]]
    factories = ["andy-*"]
    triggers = ["containers-*"]
    notify = ["failed", "passed"]
    destinations = ["audit"]
    """


def route_lines(stdout: str) -> dict[int, str]:
    """`routes[N]: ...` lines by N."""
    found = {}
    for line in stdout.splitlines():
        if match := re.match(r"routes\[(\d+)\]: (.*)", line):
            found[int(match.group(1))] = match.group(2)
    return found


def test_routes_of_a_failed_build(tmp_path: Path) -> None:
    config = write(tmp_path, "config.toml", ROUTES_CONFIG)
    result = run_cli("routes", "--config", config, "--payload", FIXTURES / f"{FAILED}.json")
    assert result.returncode == 0, result.stderr
    first, *_ = result.stdout.splitlines()
    assert all(word in first for word in ("andy-corp", "containers-devel", "68", "FAILED")), first

    routes = route_lines(result.stdout)
    assert sorted(routes) == [0, 1, 2, 3]
    assert routes[0].startswith("no match")
    assert "factory" in routes[0]
    assert "andy-corp" in routes[0]
    assert "other-*" in routes[0]
    assert routes[1].startswith("no match")
    assert "trigger" in routes[1]
    assert "containers-devel" in routes[1]
    assert "platform-*" in routes[1]
    assert routes[2].startswith("match")
    assert "ci-alerts" in routes[2]
    assert routes[3].startswith("match")

    # Each destination once, in the order of the routes that name it.
    assert result.stdout.splitlines()[-1] == "destinations: ci-alerts, audit"


def test_routes_of_a_passed_build_names_the_status(tmp_path: Path) -> None:
    config = write(tmp_path, "config.toml", ROUTES_CONFIG)
    result = run_cli("routes", "--config", config, "--payload", FIXTURES / f"{PASSED}.json")
    assert result.returncode == 0, result.stderr
    routes = route_lines(result.stdout)
    assert routes[2].startswith("no match")
    assert "PASSED" in routes[2]
    assert "notify" in routes[2]
    assert routes[3].startswith("match")
    assert result.stdout.splitlines()[-1] == "destinations: audit"


def test_routes_of_a_build_no_route_takes(tmp_path: Path) -> None:
    config = write(
        tmp_path,
        "config.toml",
        f"""
        [[sources]]
        name = "docs-example"
        secret = "{SECRET}"
        factories = ["*"]
        [[destinations]]
        name = "audit"
        type = "console"
        [[routes]]
        notify = ["failed"]
        destinations = ["audit"]
        """,
    )
    result = run_cli("routes", "--config", config, "--payload", FIXTURES / f"{PASSED}.json")
    assert result.returncode == 0, result.stderr
    assert route_lines(result.stdout)[0].startswith("no match")
    assert result.stdout.splitlines()[-1] == "destinations: (none)"


def test_routes_of_a_payload_that_is_not_a_build(tmp_path: Path) -> None:
    config = write(tmp_path, "config.toml", ROUTES_CONFIG)
    payload = write(tmp_path, "payload.json", '{"hello": "world"}')
    assert_one_line_error(run_cli("routes", "--config", config, "--payload", payload), "payload")
    missing = tmp_path / "missing.json"
    assert_one_line_error(
        run_cli("routes", "--config", config, "--payload", missing), str(missing), "cannot read"
    )


def test_routes_of_a_config_with_problems(tmp_path: Path) -> None:
    config = write(tmp_path, "config.toml", ROUTES_CONFIG.replace('"audit"]', '"ops"]', 1))
    result = run_cli("routes", "--config", config, "--payload", FIXTURES / f"{FAILED}.json")
    assert_one_line_error(result, 'no destination named "ops"')


# --- send-test ------------------------------------------------------------------------


@pytest.fixture
async def bridge(tmp_path: Path, fake_chat: FakeChat, aiohttp_client: ClientFactory) -> Client:
    """A running bridge (in this process), whose only source has SECRET."""
    config = write(
        tmp_path,
        "config.toml",
        f"""
        [server]
        shutdown_timeout = "0.5s"
        [delivery]
        poll_interval = "0.05s"
        [[sources]]
        name = "docs-example"
        secret = "{SECRET}"
        factories = ["*"]
        [[destinations]]
        name = "hook"
        type = "generic"
        url = "{fake_chat.url("/hook")}"
        timeout = "0.5s"
        rate_limit = 0
        [[routes]]
        notify = ["failed", "passed"]
        destinations = ["hook"]
        """,
    )
    return await aiohttp_client(create_app(load_config(config)))


async def send_test(
    url: str, *more: str | Path, secret: str | None = SECRET, variable: str = SECRET_VARIABLE
) -> subprocess.CompletedProcess[str]:
    """`send-test --url URL --secret-env VARIABLE ...`, with VARIABLE set to `secret` (if any)."""
    environment = {variable: secret} if secret is not None else {}
    # In a thread: the bridge answering it runs on this event loop.
    return await asyncio.to_thread(
        run_cli, "send-test", "--url", url, "--secret-env", variable, *more, environment=environment
    )


def answer_of(stdout: str) -> tuple[int, Any]:
    """send-test prints `STATUS BODY`."""
    status, body = stdout.strip().split(" ", 1)
    return int(status), json.loads(body)


async def test_send_test_posts_a_signed_sample(bridge: Client, fake_chat: FakeChat) -> None:
    url = str(bridge.make_url("/webhook"))
    result = await send_test(url)
    assert result.returncode == 0, result.stderr
    status, body = answer_of(result.stdout)
    assert status == 202
    assert body["deliveries"] == 1

    [event] = await bridge.app[RUNTIME].store.recent_events(10)
    assert event.id == body["event_id"]
    assert event.status == "FAILED"
    [message] = await fake_chat.wait_for(1, path="/hook")
    assert message.json["build_id"] == event.build_id

    again = await send_test(url)
    assert again.returncode == 0, again.stderr
    status, body = answer_of(again.stdout)
    assert status == 200
    assert body["duplicate"] is True


async def test_send_test_posts_the_given_payload_byte_for_byte(bridge: Client) -> None:
    payload = FIXTURES / f"{PASSED}.json"
    result = await send_test(str(bridge.make_url("/webhook")), "--payload", payload)
    assert result.returncode == 0, result.stderr
    assert answer_of(result.stdout)[0] == 202
    [event] = await bridge.app[RUNTIME].store.recent_events(10)
    assert event.body == payload.read_bytes()
    assert event.status == "PASSED"


async def test_send_test_with_a_wrong_secret_prints_the_401(bridge: Client) -> None:
    result = await send_test(str(bridge.make_url("/webhook")), secret="not-the-secret")
    assert result.returncode == 1
    status, body = answer_of(result.stdout)
    assert status == 401
    assert "signature" in body["error"]
    assert await bridge.app[RUNTIME].store.recent_events(10) == []


async def test_send_test_with_an_unset_variable(bridge: Client) -> None:
    result = await send_test(
        str(bridge.make_url("/webhook")), secret=None, variable="BRIDGE_TEST_UNSET_VARIABLE"
    )
    assert_one_line_error(result, "BRIDGE_TEST_UNSET_VARIABLE", "not set")
    assert result.stdout == ""
    assert await bridge.app[RUNTIME].store.recent_events(10) == []


async def test_send_test_with_a_missing_payload(bridge: Client, tmp_path: Path) -> None:
    missing = tmp_path / "missing.json"
    result = await send_test(str(bridge.make_url("/webhook")), "--payload", missing)
    assert_one_line_error(result, str(missing), "cannot read")


async def test_send_test_to_nothing_listening() -> None:
    url = f"http://127.0.0.1:{free_port()}/webhook"
    result = await send_test(url)
    assert result.returncode == 1
    assert result.stdout == ""
    [line] = result.stderr.splitlines()
    assert url in line
    assert "cannot reach" in line
    assert SECRET not in result.stderr


@pytest.mark.parametrize(
    "url", ["localhost:8080/webhook", "ftp://127.0.0.1/webhook", "http://127.0.0.1:port/webhook"]
)
async def test_send_test_to_something_that_is_not_a_url(url: str) -> None:
    result = await send_test(url)
    assert_one_line_error(result, url, "expected http")
    assert result.stdout == ""


async def test_send_test_to_a_server_that_does_not_speak_http() -> None:
    async def greet(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"SSH-2.0-OpenSSH_9.6\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(greet, "127.0.0.1", 0)
    async with server:
        port = server.sockets[0].getsockname()[1]
        url = f"http://127.0.0.1:{port}/webhook"
        result = await send_test(url)
    assert result.returncode == 1
    assert result.stdout == ""
    [line] = result.stderr.splitlines()
    assert f"cannot reach {url}" in line


# --- --version, check-config ----------------------------------------------------------


def test_version_prints_the_package_version() -> None:
    result = run_cli("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"jobserv-bridge {__version__}"


CHECKED_CONFIG = """
    [[sources]]
    name = "docs-example"
    secret = "${BRIDGE_TEST_WEBHOOK_SECRET}"
    factories = ["*"]

    [[destinations]]
    name = "ci-alerts"
    type = "slack-webhook"
    url = "${BRIDGE_TEST_SLACK_URL}"
    template = "templates/slack-own.j2"

    [[routes]]
    destinations = ["ci-alerts"]
    """

GOOD_TEMPLATE = '{"text": {{ "build " ~ build_id ~ " " ~ status }}}\n'
# Line 3 uses a filter that does not exist: Jinja refuses to compile it.
BROKEN_TEMPLATE = '{\n  "text": {{ status }},\n  "runs": {{ runs | no_such_filter }}\n}\n'


def checked_config(folder: Path, template: str) -> Path:
    (folder / "templates").mkdir(exist_ok=True)
    (folder / "templates" / "slack-own.j2").write_text(template)
    return write(folder, "config.toml", CHECKED_CONFIG)


ENVIRONMENT = {
    "BRIDGE_TEST_WEBHOOK_SECRET": SECRET,
    "BRIDGE_TEST_SLACK_URL": "https://hooks.slack.com/services/T000/B000/XXXX",
}


def test_check_config_resolves_variables_and_compiles_templates(tmp_path: Path) -> None:
    config = checked_config(tmp_path, GOOD_TEMPLATE)
    result = run_cli("check-config", "--config", config, environment=ENVIRONMENT)
    assert result.returncode == 0, result.stderr
    assert "ok" in result.stdout
    assert "hooks.slack.com" not in result.stdout + result.stderr


def test_check_config_names_every_unset_variable(tmp_path: Path) -> None:
    config = checked_config(tmp_path, GOOD_TEMPLATE)
    result = run_cli("check-config", "--config", config)
    assert result.returncode == 2
    secret_line, url_line = result.stderr.splitlines()
    unset = "environment variable {} is not set"
    assert f"sources[0].secret: {unset.format('BRIDGE_TEST_WEBHOOK_SECRET')}" in secret_line
    assert f"destinations[0].url: {unset.format('BRIDGE_TEST_SLACK_URL')}" in url_line


def test_check_config_of_a_broken_template_names_its_file_and_line(tmp_path: Path) -> None:
    config = checked_config(tmp_path, BROKEN_TEMPLATE)
    result = run_cli("check-config", "--config", config, environment=ENVIRONMENT)
    line = assert_one_line_error(result, "destinations[0].template", "slack-own.j2", "line 3")
    assert result.stdout == ""
    assert "Traceback" not in line


def test_check_config_of_a_missing_template(tmp_path: Path) -> None:
    config = checked_config(tmp_path, GOOD_TEMPLATE)
    (tmp_path / "templates" / "slack-own.j2").unlink()
    result = run_cli("check-config", "--config", config, environment=ENVIRONMENT)
    assert_one_line_error(result, "destinations[0].template", "slack-own.j2", "cannot read")
