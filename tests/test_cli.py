"""The jobserv-bridge command as users run it: `python -m bridge ...` in a subprocess."""

from __future__ import annotations

import asyncio
import json
import subprocess
import textwrap
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from bridge import __version__
from bridge.config import load_config
from bridge.server import RUNTIME, create_app
from bridge.store import State
from tests.conftest import FAILED, FIXTURES, PASSED, SECRET, fixture_body, signed_headers
from tests.fakes.chat_server import FakeChat, Reply
from tests.serve import REPO_ROOT, run_cli

EXAMPLE_CONFIG = REPO_ROOT / "config.example.toml"
ClientFactory = Callable[..., Awaitable[TestClient[Any, Any]]]


def assert_one_line_error(result: subprocess.CompletedProcess[str], *words: str) -> str:
    """Exit 2 with one line on stderr naming the problem (no traceback); returns the line."""
    assert result.returncode == 2, result
    [line] = result.stderr.splitlines()
    assert all(word in line for word in words), line
    return line


def assert_usage_error(result: subprocess.CompletedProcess[str], *words: str) -> str:
    """Exit 2 with the usage and then one error line naming the problem; returns the line."""
    assert result.returncode == 2, result
    assert "Traceback" not in result.stderr
    *usage, line = result.stderr.splitlines()
    assert usage[0].startswith("usage: jobserv-bridge")
    assert "error:" in line
    assert all(word in line for word in words), line
    return line


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.write_text(textwrap.dedent(text))
    return path


# --- version, sign --------------------------------------------------------------


def test_version() -> None:
    result = run_cli("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"jobserv-bridge {__version__}"


@pytest.mark.parametrize("fixture", [FAILED, PASSED])
def test_sign_prints_the_header_jobserv_sends(fixture: str) -> None:
    result = run_cli("sign", "--secret", SECRET, FIXTURES / f"{fixture}.json")
    assert result.returncode == 0, result.stderr
    assert result.stdout == (FIXTURES / f"{fixture}.sig").read_text().strip() + "\n"


def test_sign_with_another_secret_differs() -> None:
    result = run_cli("sign", "--secret", "another", FIXTURES / f"{FAILED}.json")
    assert result.returncode == 0
    assert result.stdout.startswith("sha256:")
    assert result.stdout.strip() != (FIXTURES / f"{FAILED}.sig").read_text().strip()


def test_sign_a_missing_file(tmp_path: Path) -> None:
    missing = tmp_path / "nothing.json"
    result = run_cli("sign", "--secret", SECRET, missing)
    assert_one_line_error(result, str(missing), "cannot read")
    assert result.stdout == ""


# --- check-config ---------------------------------------------------------------


def test_check_config_accepts_the_example() -> None:
    result = run_cli(
        "check-config",
        "--config",
        EXAMPLE_CONFIG,
        environment={"JOBSERV_WEBHOOK_SECRET": "from-the-environment"},
    )
    assert result.returncode == 0, result.stderr
    assert "ok" in result.stdout


def test_check_config_of_the_example_needs_its_secret() -> None:
    result = run_cli("check-config", "--config", EXAMPLE_CONFIG)
    assert_one_line_error(
        result, "sources[0].secret", "environment variable JOBSERV_WEBHOOK_SECRET is not set"
    )


def test_serve_refuses_the_example_without_its_secret() -> None:
    result = run_cli("serve", "--config", EXAMPLE_CONFIG)
    assert_one_line_error(
        result, "sources[0].secret", "environment variable JOBSERV_WEBHOOK_SECRET is not set"
    )


def test_check_config_lists_every_problem_with_its_place(tmp_path: Path) -> None:
    config = write(
        tmp_path,
        "bad.toml",
        """
        [server]
        port = 99999
        colour = "blue"

        [[sources]]
        name = "docs"
        secret = "${BRIDGE_TEST_UNSET_VARIABLE}"
        factories = ["andy-corp"]

        [[destinations]]
        name = "chat"
        type = "carrier-pigeon"

        [[destinations]]
        name = "hook"
        type = "generic"

        [[routes]]
        notify = ["failed", "sometimes"]
        destinations = ["hook", "ops"]
        """,
    )
    result = run_cli("check-config", "--config", config)
    assert result.returncode == 2
    assert result.stdout == ""
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    expected_places = [
        "server.port:",
        "server.colour: unknown key",
        "sources[0].secret: environment variable BRIDGE_TEST_UNSET_VARIABLE is not set",
        "destinations[0].type: unknown destination type 'carrier-pigeon'",
        "destinations[1].url: missing",
        "routes[0].notify[1]:",
        'routes[0].destinations[1]: no destination named "ops"',
    ]
    for place in expected_places:
        assert [line for line in lines if place in line], f"{place!r} not in:\n{result.stderr}"
    assert len(lines) == len(expected_places)
    assert all(line.startswith(f"{config}: ") for line in lines)


def test_check_config_of_a_missing_file(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.toml"
    line = assert_one_line_error(run_cli("check-config", "--config", missing), "cannot read")
    assert line.count(str(missing)) == 1


def test_check_config_of_a_file_that_is_not_toml(tmp_path: Path) -> None:
    config = write(tmp_path, "broken.toml", "[server\nport = 1\n")
    line = assert_one_line_error(run_cli("check-config", "--config", config), "not valid TOML")
    assert line.count(str(config)) == 1


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["frobnicate"], ["invalid choice", "frobnicate"]),
        (["check-config"], ["--config"]),
        (["render", "--config", "x.toml"], ["--payload"]),
        (["sign", "file.json"], ["--secret"]),
        (["outbox", "--config", "x.toml", "retry"], ["--all-dead"]),
        (["outbox", "--config", "x.toml", "purge", "--older-than", "forever"], ["duration"]),
    ],
)
def test_bad_arguments_are_one_line(args: list[str], words: list[str]) -> None:
    line = assert_usage_error(run_cli(*args), *words)
    assert line.startswith("jobserv-bridge")


# --- render ---------------------------------------------------------------------

RENDER_CONFIG = """
    [admin]
    enabled = false

    [[sources]]
    name = "docs-example"
    secret = "{secret}"
    factories = ["*"]

    [[destinations]]
    name = "audit"
    type = "generic"
    url = "{audit_url}"

    [[destinations]]
    name = "ci-alerts"
    type = "slack-webhook"
    url = "{slack_url}"

    [[destinations]]
    name = "platform-team"
    type = "generic"
    url = "{audit_url}"

    [[routes]]
    notify = ["failed"]
    destinations = ["audit", "ci-alerts"]

    [[routes]]
    triggers = ["containers-*"]
    notify = ["failed"]
    destinations = ["audit"]

    [[routes]]
    triggers = ["platform-*"]
    notify = ["failed", "passed"]
    destinations = ["platform-team"]
    """


def render_config(folder: Path, audit_url: str, slack_url: str) -> Path:
    text = RENDER_CONFIG.format(secret=SECRET, audit_url=audit_url, slack_url=slack_url)
    return write(folder, "config.toml", text)


def render_offline(folder: Path, payload: Path, *more: str) -> subprocess.CompletedProcess[str]:
    """`render --payload PAYLOAD MORE` with the render config, its chats unreachable."""
    config = render_config(folder, "http://127.0.0.1:9/audit", "http://127.0.0.1:9/slack")
    return run_cli("render", "--config", config, "--payload", payload, *more)


def json_documents(text: str) -> list[Any]:
    """Every JSON document in `text`, one after another."""
    decoder = json.JSONDecoder()
    documents, position = [], 0
    while text[position:].strip():
        position += len(text[position:]) - len(text[position:].lstrip())
        document, position = decoder.raw_decode(text, position)
        documents.append(document)
    return documents


def test_render_one_destination(tmp_path: Path) -> None:
    result = render_offline(tmp_path, FIXTURES / f"{FAILED}.json", "--destination", "audit")
    assert result.returncode == 0, result.stderr
    [document] = json_documents(result.stdout)
    assert document["summary"] == "andy-corp / containers-devel #68 FAILED: 1 of 3 runs failed"
    assert document["build_id"] == 68
    assert document["status"] == "FAILED"
    assert document["url"] == "https://ci.foundries.io/projects/andy-corp/lmp/builds/68"
    assert document["reason"] == "bump to test webhooks"
    assert document["counts"] == {"runs": 3, "failed": 1, "passed": 2, "other": 0}
    [run] = document["failed_runs"]
    assert run["name"] == "build-armhf"
    assert run["log_url"].endswith("/builds/68/runs/build-armhf/console.log")


def test_render_a_destination_no_route_names(tmp_path: Path) -> None:
    """--destination renders for that destination even when routing would not send there."""
    result = render_offline(tmp_path, FIXTURES / f"{PASSED}.json", "--destination", "ci-alerts")
    assert result.returncode == 0, result.stderr
    [document] = json_documents(result.stdout)
    assert "andy-corp / containers-devel #67 PASSED" in document["text"]
    assert document["blocks"][0]["type"] == "header"


def test_render_every_routed_destination_once(tmp_path: Path) -> None:
    result = render_offline(tmp_path, FIXTURES / f"{FAILED}.json")
    assert result.returncode == 0, result.stderr
    generic, slack = json_documents(result.stdout)
    assert generic["source"] == "jobserv-bridge"
    assert generic["build_id"] == 68
    assert slack["text"].startswith(":red_circle: andy-corp / containers-devel #68 FAILED")
    assert any("build-armhf" in json.dumps(block) for block in slack["blocks"])
    # Which body is whose, on stderr so that stdout stays the bodies alone.
    names = [line for line in result.stderr.splitlines() if line.startswith("#")]
    assert names == ["# audit (generic)", "# ci-alerts (slack-webhook)"]


def test_render_a_build_routed_nowhere_says_so(tmp_path: Path) -> None:
    result = render_offline(tmp_path, FIXTURES / f"{PASSED}.json")
    assert result.returncode == 0
    assert result.stdout == ""
    assert "no route sends this build anywhere" in result.stderr


def test_render_for_an_unknown_destination(tmp_path: Path) -> None:
    result = render_offline(tmp_path, FIXTURES / f"{FAILED}.json", "--destination", "ops")
    assert_one_line_error(result, 'no destination named "ops"')
    assert result.stdout == ""


def test_render_a_payload_that_is_not_a_build(tmp_path: Path) -> None:
    payload = write(tmp_path, "payload.json", '{"build_id": "sixty-eight"}')
    result = render_offline(tmp_path, payload)
    assert_one_line_error(result, str(payload), "not a JobServ build")


async def test_render_prints_what_serve_posts(
    tmp_path: Path, fake_chat: FakeChat, aiohttp_client: ClientFactory
) -> None:
    """The bodies render prints are the bodies the chats receive (bar the event id)."""
    config_path = render_config(tmp_path, fake_chat.url("/audit"), fake_chat.url("/slack"))
    client = await aiohttp_client(create_app(load_config(config_path)))
    body = fixture_body(FAILED)
    answer = await client.post("/webhook", data=body, headers=signed_headers(body))
    assert answer.status == 202
    await fake_chat.wait_for(1, path="/audit")
    await fake_chat.wait_for(1, path="/slack")
    await client.close()

    payload = FIXTURES / f"{FAILED}.json"
    for name, path in (("audit", "/audit"), ("ci-alerts", "/slack")):
        result = await asyncio.to_thread(
            run_cli, "render", "--config", config_path, "--payload", payload, "--destination", name
        )
        assert result.returncode == 0, result.stderr
        [rendered] = json_documents(result.stdout)
        [received] = fake_chat.requests_to(path)
        if "event_id" in rendered:  # not known before the event is stored
            rendered["event_id"] = received.json["event_id"]
        assert rendered == received.json


IDENTITY_CONFIG = """
    [admin]
    enabled = false

    [[sources]]
    name = "jobserv"
    secret = "{secret}"
    factories = ["*"]

    [[destinations]]
    name = "discord"
    type = "discord"
    url = "{discord_url}"
    username = "JobServ"
    avatar_url = "https://example.com/fio.png"

    [[destinations]]
    name = "mattermost"
    type = "mattermost"
    url = "{mattermost_url}"
    channel = "ci"
    username = "JobServ"

    [[destinations]]
    name = "slack"
    type = "slack-api"
    token = "{token}"
    channel = "#ci"

    [[routes]]
    destinations = ["discord", "mattermost"]
    """


def preview_config(folder: Path) -> Path:
    """The identity config with every secret an unset environment variable."""
    text = IDENTITY_CONFIG.format(
        secret="${BRIDGE_TEST_UNSET_SECRET}",
        discord_url="${BRIDGE_TEST_UNSET_DISCORD_URL}",
        mattermost_url="${BRIDGE_TEST_UNSET_MATTERMOST_URL}",
        token="${BRIDGE_TEST_UNSET_TOKEN}",
    )
    return write(folder, "preview.toml", text)


async def test_render_without_secrets_prints_what_serve_posts_with_the_chats_fields(
    tmp_path: Path, fake_chat: FakeChat, aiohttp_client: ClientFactory
) -> None:
    """The preview needs no secret, and shows the fields a chat adds when it sends (a
    Discord user name, a Mattermost channel): byte for byte what the chats receive."""
    text = IDENTITY_CONFIG.format(
        secret=SECRET,
        discord_url=fake_chat.url("/discord"),
        mattermost_url=fake_chat.url("/mattermost"),
        token="xoxb-0",
    )
    config_path = write(tmp_path, "config.toml", text)
    client = await aiohttp_client(create_app(load_config(config_path)))
    body = fixture_body(FAILED)
    answer = await client.post("/webhook", data=body, headers=signed_headers(body))
    assert answer.status == 202
    await fake_chat.wait_for(1, path="/discord")
    await fake_chat.wait_for(1, path="/mattermost")
    await client.close()

    preview = preview_config(tmp_path)
    payload = FIXTURES / f"{FAILED}.json"
    for name in ("discord", "mattermost"):
        result = await asyncio.to_thread(
            run_cli, "render", "--config", preview, "--payload", payload, "--destination", name
        )
        assert result.returncode == 0, result.stderr
        [rendered] = json_documents(result.stdout)
        [received] = fake_chat.requests_to(f"/{name}")
        assert rendered == received.json
        assert rendered["username"] == "JobServ"
    assert received.json["channel"] == "ci"


def test_render_for_slack_api_shows_its_channel_without_the_token(tmp_path: Path) -> None:
    result = run_cli(
        "render",
        "--config",
        preview_config(tmp_path),
        "--payload",
        FIXTURES / f"{FAILED}.json",
        "--destination",
        "slack",
    )
    assert result.returncode == 0, result.stderr
    [document] = json_documents(result.stdout)
    assert document["channel"] == "#ci"
    assert document["text"].startswith(":red_circle:")
    assert "<unset" not in result.stdout + result.stderr


def test_routes_needs_no_secrets_but_serve_does(tmp_path: Path) -> None:
    config = preview_config(tmp_path)
    routes = run_cli("routes", "--config", config, "--payload", FIXTURES / f"{FAILED}.json")
    assert routes.returncode == 0, routes.stderr
    assert "destinations: discord, mattermost" in routes.stdout
    serve = run_cli("serve", "--config", config)
    assert serve.returncode == 2
    assert "Traceback" not in serve.stderr
    for variable in ("SECRET", "DISCORD_URL", "MATTERMOST_URL", "TOKEN"):
        assert f"environment variable BRIDGE_TEST_UNSET_{variable} is not set" in serve.stderr


def test_previews_need_no_database_url_but_still_check_the_rest_of_the_store(
    tmp_path: Path,
) -> None:
    """`[store] url = "${DATABASE_URL}"` unset: a preview does not need the database, so
    it does not read the placeholder as a URL to check; the other keys are still checked."""
    base = preview_config(tmp_path).read_text()
    config = write(tmp_path, "pg.toml", base + '\n[store]\nurl = "${BRIDGE_TEST_UNSET_PG}"\n')
    payload = FIXTURES / f"{FAILED}.json"
    routes = run_cli("routes", "--config", config, "--payload", payload)
    assert routes.returncode == 0, routes.stderr
    assert "destinations: discord, mattermost" in routes.stdout
    render = run_cli("render", "--config", config, "--payload", payload)
    assert render.returncode == 0, render.stderr
    check = run_cli("check-config", "--config", config)
    assert check.returncode == 2
    assert "store.url: environment variable BRIDGE_TEST_UNSET_PG is not set" in check.stderr
    assert "postgresql://" not in check.stderr  # no second problem about the placeholder

    broken = write(tmp_path, "broken.toml", config.read_text() + "pool_size = 0\n")
    routes = run_cli("routes", "--config", broken, "--payload", payload)
    assert routes.returncode == 2
    assert "store.pool_size:" in routes.stderr
    assert "postgresql://" not in routes.stderr


# --- outbox ---------------------------------------------------------------------

OUTBOX_CONFIG = """
    [admin]
    enabled = false

    [store]
    path = "bridge.sqlite3"

    [delivery]
    retry_initial = "0.05s"
    retry_max = "0.2s"
    poll_interval = "0.05s"

    [[sources]]
    name = "docs-example"
    secret = "{secret}"
    factories = ["*"]

    [[destinations]]
    name = "audit"
    type = "generic"
    url = "{audit_url}"
    timeout = "0.5s"
    rate_limit = 0

    [[destinations]]
    name = "broken-hook"
    type = "generic"
    url = "{broken_url}"
    timeout = "0.5s"
    rate_limit = 0

    [[routes]]
    notify = ["failed", "passed"]
    destinations = ["audit", "broken-hook"]
    """


async def serve_until(
    client_factory: ClientFactory,
    config_path: Path,
    bodies: list[bytes],
    wanted: dict[State, int],
) -> None:
    """Run the app in-process, post `bodies`, and stop once the outbox counts are `wanted`."""
    client = await client_factory(create_app(load_config(config_path)))
    try:
        for body in bodies:
            answer = await client.post("/webhook", data=body, headers=signed_headers(body))
            assert answer.status == 202
        store = client.app[RUNTIME].store
        deadline = asyncio.get_running_loop().time() + 5.0
        while (counts := await store.counts()) != wanted:
            assert asyncio.get_running_loop().time() < deadline, counts
            await asyncio.sleep(0.05)
    finally:
        await client.close()


@pytest.fixture
async def filled_outbox(tmp_path: Path, fake_chat: FakeChat, aiohttp_client: ClientFactory) -> Path:
    """Both fixtures sent to audit (200) and dead at broken-hook (404): ids 1-4."""
    fake_chat.default("/broken", Reply(404, "no_service"))
    text = OUTBOX_CONFIG.format(
        secret=SECRET, audit_url=fake_chat.url("/audit"), broken_url=fake_chat.url("/broken")
    )
    config_path = write(tmp_path, "config.toml", text)
    bodies = [fixture_body(FAILED), fixture_body(PASSED)]
    await serve_until(aiohttp_client, config_path, bodies, {"pending": 0, "sent": 2, "dead": 2})
    return config_path


async def outbox(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(run_cli, "outbox", "--config", config, *args)


def listed(result: subprocess.CompletedProcess[str]) -> list[tuple[int, str, str]]:
    """(id, state, destination) of each delivery row `outbox list` printed."""
    assert result.returncode == 0, result.stderr
    header, *lines = result.stdout.splitlines()
    assert header.split()[:3] == ["ID", "STATE", "DESTINATION"]
    rows = []
    for line in lines:
        fields = line.split()
        if fields[0].isdigit():
            rows.append((int(fields[0]), fields[1], fields[2]))
    return rows


async def test_outbox_list_shows_every_delivery_newest_first(filled_outbox: Path) -> None:
    result = await outbox(filled_outbox, "list")
    rows = listed(result)
    assert [row[0] for row in rows] == sorted((row[0] for row in rows), reverse=True)
    assert sorted(rows) == [
        (1, "sent", "audit"),
        (2, "dead", "broken-hook"),
        (3, "sent", "audit"),
        (4, "dead", "broken-hook"),
    ]
    assert "andy-corp containers-devel #68 FAILED" in result.stdout
    assert "andy-corp containers-devel #67 PASSED" in result.stdout
    assert "0 pending, 2 sent, 2 dead" in result.stderr


async def test_outbox_list_dead_shows_why(filled_outbox: Path) -> None:
    result = await outbox(filled_outbox, "list", "--dead")
    assert sorted(listed(result)) == [(2, "dead", "broken-hook"), (4, "dead", "broken-hook")]
    errors = [line for line in result.stdout.splitlines() if "last error:" in line]
    assert len(errors) == 2
    assert all("HTTP 404" in line and "no_service" in line for line in errors)


async def test_outbox_list_redacts_and_escapes_what_it_prints(
    tmp_path: Path, fake_chat: FakeChat, aiohttp_client: ClientFactory
) -> None:
    """A dead letter kept before its secret was configured, and a trigger's controls:
    `outbox list` prints neither the secret nor a terminal escape."""
    fake_chat.default("/broken", Reply(404, "token rotated-token-4711 refused"))
    text = OUTBOX_CONFIG.format(
        secret=SECRET, audit_url=fake_chat.url("/audit"), broken_url=fake_chat.url("/broken")
    )
    config_path = write(tmp_path, "config.toml", text)
    data = json.loads(fixture_body(FAILED))
    data["trigger_name"] = "containers\x1b[2J\x1b]0;owned\x07-devel"
    body = json.dumps(data).encode()
    await serve_until(aiohttp_client, config_path, [body], {"pending": 0, "sent": 1, "dead": 1})
    # The operator now names the token as the broken hook's header: a secret of the config.
    config_path.write_text(
        text + '\n[destinations.headers]\nAuthorization = "rotated-token-4711"\n'
    )

    result = await outbox(config_path, "list")

    assert result.returncode == 0, result.stderr
    assert "rotated-token-4711" not in result.stdout
    assert "last error: HTTP 404" in result.stdout
    assert not any(ord(c) < 0x20 and c != "\n" for c in result.stdout)
    assert "containers\\x1b[2J" in result.stdout


async def test_outbox_retry_one_dead_letter_sends_it_again(
    filled_outbox: Path, fake_chat: FakeChat, aiohttp_client: ClientFactory
) -> None:
    result = await outbox(filled_outbox, "retry", "4")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "1 dead letter queued again"
    assert sorted(listed(await outbox(filled_outbox, "list", "--pending"))) == [
        (4, "pending", "broken-hook")
    ]

    fake_chat.default("/broken", Reply(200))
    fake_chat.clear()
    await serve_until(aiohttp_client, filled_outbox, [], {"pending": 0, "sent": 3, "dead": 1})
    [resent] = fake_chat.requests_to("/broken")
    assert resent.json["build_id"] == 67  # delivery 4 is the passed build's
    assert fake_chat.requests_to("/audit") == []
    assert sorted(listed(await outbox(filled_outbox, "list", "--dead"))) == [
        (2, "dead", "broken-hook")
    ]


async def test_outbox_retry_all_dead(
    filled_outbox: Path, fake_chat: FakeChat, aiohttp_client: ClientFactory
) -> None:
    result = await outbox(filled_outbox, "retry", "--all-dead")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "2 dead letters queued again"

    fake_chat.default("/broken", Reply(200))
    fake_chat.clear()
    await serve_until(aiohttp_client, filled_outbox, [], {"pending": 0, "sent": 4, "dead": 0})
    # Replayed in their original order.
    assert [r.json["build_id"] for r in fake_chat.requests_to("/broken")] == [68, 67]
    assert listed(await outbox(filled_outbox, "list", "--dead")) == []


async def test_outbox_retry_leaves_sent_deliveries_alone(filled_outbox: Path) -> None:
    result = await outbox(filled_outbox, "retry", "1", "3")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "0 dead letters queued again"
    assert listed(await outbox(filled_outbox, "list", "--pending")) == []


async def test_outbox_purge_keeps_what_is_younger(filled_outbox: Path) -> None:
    result = await outbox(filled_outbox, "purge", "--older-than", "30d")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "0 deliveries purged"
    assert len(listed(await outbox(filled_outbox, "list"))) == 4


async def test_outbox_purge_removes_sent_and_dead(filled_outbox: Path) -> None:
    await outbox(filled_outbox, "retry", "2")  # pending again: never purged
    result = await outbox(filled_outbox, "purge", "--older-than", "0s")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "3 deliveries purged"
    assert listed(await outbox(filled_outbox, "list")) == [(2, "pending", "broken-hook")]


async def test_outbox_of_a_config_with_problems(tmp_path: Path) -> None:
    text = OUTBOX_CONFIG.format(secret=SECRET, audit_url="http://127.0.0.1:9/", broken_url="")
    config = write(tmp_path, "config.toml", text.replace('path = "bridge.sqlite3"', "path = 3"))
    result = await asyncio.to_thread(run_cli, "outbox", "--config", config, "list")
    assert_one_line_error(result, str(config), "store.path")
