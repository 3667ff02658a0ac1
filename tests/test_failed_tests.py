"""Failed test names in failed-build messages, looked up in the JobServ API.

The real app takes signed webhooks and delivers to fake chats; a second fake server
plays the JobServ API (`[jobserv] api_url` points at it, so the public tests URLs a
build carries are asked of it instead).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from bridge.config import Config, ConfigError
from bridge.server import RUNTIME, create_app
from bridge.store import DeliveryRow, Store
from tests.conftest import (
    FAILED,
    fixture_body,
    make_config,
    quick_settings,
    signed_headers,
)
from tests.fakes.chat_server import FakeChat, Hang, Reply
from tests.serve import run_cli

ClientFactory = Callable[[Any], Awaitable[TestClient[Any, Any]]]

TOKEN = "fio-token-0123456789abcdef"
PUBLIC_API = "https://api.foundries.io"
# The failed run of the sample build (build-armhf) lists its tests here.
RUN_TESTS = "/projects/andy-corp/lmp/builds/68/runs/build-armhf/tests/"
SLACK_SECTION_LIMIT = 3000


@dataclass(frozen=True)
class FakeTest:
    name: str
    status: str = "FAILED"
    results: list[tuple[str, str]] = field(default_factory=list)  # (name, status)

    @property
    def path(self) -> str:
        return f"{RUN_TESTS}{self.name}/"


def list_answer(tests: list[FakeTest]) -> Reply:
    """JobServ's answer to a run's tests URL."""
    listed = [
        {
            "name": test.name,
            "url": PUBLIC_API + test.path,
            "status": test.status,
            "context": None,
            "created": "2021-07-27T09:02:50+00:00",
        }
        for test in tests
    ]
    return Reply(json={"status": "success", "data": {"tests": listed}})


def serve_tests(api: FakeChat, tests: list[FakeTest]) -> None:
    """Answer like JobServ: the run's test list, and each test with its results."""
    api.default(RUN_TESTS, list_answer(tests))
    for test in tests:
        results = [
            {"name": name, "context": None, "status": status, "output": f"{name}: {status}\n"}
            for name, status in test.results
        ]
        detail = {"name": test.name, "status": test.status, "context": None, "results": results}
        api.default(test.path, Reply(json={"status": "success", "data": {"test": detail}}))


UNIT_TESTS = FakeTest(
    "unit-tests",
    results=[
        ("boot", "PASSED"),
        ("net-a", "FAILED"),
        ("net-b", "FAILED"),
        ("net-c", "FAILED"),
        ("net-d", "FAILED"),
    ],
)
LINT = FakeTest("lint", results=[("shellcheck", "FAILED"), ("flake8", "PASSED")])
SMOKE = FakeTest("smoke", status="PASSED", results=[("ping", "PASSED")])


def config_for(
    folder: Path,
    chat: FakeChat | None,
    jobserv: str | None,
    destinations: tuple[str, ...] = ("slack", "generic"),
) -> Config:
    """A config sending every build to `destinations` on `chat`; `jobserv`: the section's keys."""
    text = quick_settings()
    if jobserv is not None:
        text += f"[jobserv]\n{jobserv}\n"
    for name in destinations:
        kind = {"slack": "slack-webhook", "console": "console"}.get(name, "generic")
        url = ""
        if kind != "console":
            assert chat is not None
            url = f'url = "{chat.url("/" + name)}"'
        text += f"""
[[destinations]]
name = "{name}"
type = "{kind}"
{url}
timeout = "0.5s"
rate_limit = 0
"""
    text += f"""
[[routes]]
notify = ["failed", "passed"]
destinations = {json.dumps(list(destinations))}
"""
    return make_config(folder, text)


def jobserv_keys(api: FakeChat, extra: str = "") -> str:
    return f'api_token = "{TOKEN}"\napi_url = "{api.base_url}/"\ntimeout = "2s"\n{extra}'


async def post(client: TestClient[Any, Any], body: bytes) -> None:
    response = await client.post("/webhook", data=body, headers=signed_headers(body))
    assert response.status == 202, await response.text()


def run_section(message: dict[str, Any], run: str = "build-armhf") -> str:
    [text] = [
        block["text"]["text"]
        for block in message["blocks"]
        if block["type"] == "section" and f"|{run}>" in block["text"]["text"]
    ]
    assert isinstance(text, str)
    return text


def failed_run(document: dict[str, Any], run: str = "build-armhf") -> dict[str, Any]:
    [found] = [r for r in document["failed_runs"] if r["name"] == run]
    assert isinstance(found, dict)
    return found


async def wait_sent(
    client: TestClient[Any, Any],
    destination: str,
    timeout: float = 5.0,  # noqa: ASYNC109
) -> DeliveryRow:
    deadline = time.monotonic() + timeout
    store: Store = client.app[RUNTIME].store
    while True:
        rows = await store.list_deliveries(state="sent", destination=destination)
        if rows:
            return rows[0]
        assert time.monotonic() < deadline, f"nothing sent to {destination}"
        await asyncio.sleep(0.02)


def with_tests_url(body: bytes, run: str, url: str | None) -> bytes:
    data = json.loads(body)
    for item in data["runs"]:
        if item["name"] == run:
            item["tests"] = url
    return json.dumps(data).encode()


@pytest.fixture
async def api() -> AsyncIterator[FakeChat]:
    async with FakeChat() as fake:
        yield fake


# --- names in the messages -----------------------------------------------------------------


async def test_failed_tests_are_named_in_slack_generic_and_console_messages(
    aiohttp_client: ClientFactory,
    api: FakeChat,
    fake_chat: FakeChat,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    serve_tests(api, [UNIT_TESTS, SMOKE, LINT])
    config = config_for(
        tmp_path, fake_chat, jobserv_keys(api), destinations=("slack", "generic", "console")
    )
    client = await aiohttp_client(create_app(config))
    await post(client, fixture_body(FAILED))

    [slack] = await fake_chat.wait_for(1, path="/slack")
    [generic] = await fake_chat.wait_for(1, path="/generic")
    await wait_sent(client, "console")

    section = run_section(slack.json)
    assert "• unit-tests — 4 failed: net-a, net-b, net-c, …" in section
    assert "• lint — 1 failed: shellcheck" in section
    assert "smoke" not in section  # it passed
    assert "unavailable" not in section

    run = failed_run(generic.json)
    assert run["failed_tests"] == [
        {
            "name": "unit-tests",
            "url": PUBLIC_API + UNIT_TESTS.path,
            "failed_results": 4,
            "results": ["net-a", "net-b", "net-c"],
        },
        {
            "name": "lint",
            "url": PUBLIC_API + LINT.path,
            "failed_results": 1,
            "results": ["shellcheck"],
        },
    ]
    assert run["more_failed_tests"] == 0
    assert run["tests_unavailable"] is False

    console = capsys.readouterr().out
    assert "failed test: unit-tests (4 failed: net-a, net-b, net-c, …)" in console
    assert "failed test: lint (1 failed: shellcheck)" in console
    # The passed test's own answer was not needed.
    assert api.requests_to(SMOKE.path) == []


async def test_the_api_is_asked_at_api_url_with_the_osf_token(
    aiohttp_client: ClientFactory,
    api: FakeChat,
    fake_chat: FakeChat,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("FIO_TOKEN", TOKEN)
    serve_tests(api, [LINT])
    keys = f'api_token = "${{FIO_TOKEN}}"\napi_url = "{api.base_url}"\ntimeout = "2s"'
    config = config_for(tmp_path, fake_chat, keys, destinations=("slack",))
    assert TOKEN in config.secrets()  # so that logs never show it
    client = await aiohttp_client(create_app(config))
    await post(client, fixture_body(FAILED))

    [message] = await fake_chat.wait_for(1, path="/slack")
    assert "• lint — 1 failed: shellcheck" in run_section(message.json)
    assert [(r.method, r.path) for r in api.requests] == [
        ("GET", RUN_TESTS),
        ("GET", LINT.path),
    ]
    assert all(r.headers.get("OSF-TOKEN") == TOKEN for r in api.requests)
    assert all(TOKEN not in r.text for r in fake_chat.requests)


# --- when the API cannot tell ----------------------------------------------------------------


async def test_a_404_still_sends_the_message_saying_the_tests_are_unavailable(
    aiohttp_client: ClientFactory, api: FakeChat, fake_chat: FakeChat, tmp_path: Path
) -> None:
    # Foundries answers 404 to a token that may not read the factory's CI.
    api.default(RUN_TESTS, Reply(404, json={"message": "Not found"}))
    client = await aiohttp_client(create_app(config_for(tmp_path, fake_chat, jobserv_keys(api))))
    await post(client, fixture_body(FAILED))

    [slack] = await fake_chat.wait_for(1, path="/slack")
    [generic] = await fake_chat.wait_for(1, path="/generic")
    section = run_section(slack.json)
    assert section.endswith("\n_tests unavailable_")
    assert "•" not in section
    run = failed_run(generic.json)
    assert run["tests_unavailable"] is True
    assert run["failed_tests"] == []


async def test_an_api_that_does_not_answer_in_time_does_not_hold_the_message(
    aiohttp_client: ClientFactory, api: FakeChat, fake_chat: FakeChat, tmp_path: Path
) -> None:
    api.default(RUN_TESTS, Hang())
    keys = f'api_token = "{TOKEN}"\napi_url = "{api.base_url}/"\ntimeout = "0.3s"'
    config = config_for(tmp_path, fake_chat, keys, destinations=("slack",))
    client = await aiohttp_client(create_app(config))
    await post(client, fixture_body(FAILED))

    [asked] = await api.wait_for(1, path=RUN_TESTS)
    [message] = await fake_chat.wait_for(1, path="/slack")
    assert run_section(message.json).endswith("\n_tests unavailable_")
    waited = message.received_at - asked.received_at
    assert 0.25 <= waited < 2.0, waited


async def test_a_test_whose_own_answer_does_not_come_is_still_named(
    aiohttp_client: ClientFactory, api: FakeChat, fake_chat: FakeChat, tmp_path: Path
) -> None:
    serve_tests(api, [UNIT_TESTS, LINT])
    api.default(UNIT_TESTS.path, Hang())
    keys = f'api_token = "{TOKEN}"\napi_url = "{api.base_url}/"\ntimeout = "0.3s"'
    config = config_for(tmp_path, fake_chat, keys, destinations=("generic",))
    client = await aiohttp_client(create_app(config))
    await post(client, fixture_body(FAILED))

    [message] = await fake_chat.wait_for(1, path="/generic")
    run = failed_run(message.json)
    assert run["tests_unavailable"] is False
    assert [(t["name"], t["failed_results"], t["results"]) for t in run["failed_tests"]] == [
        ("unit-tests", None, []),
        ("lint", 1, ["shellcheck"]),
    ]


@pytest.mark.parametrize(
    "answer",
    [
        Reply(200, "<html>Sign in</html>"),
        Reply(json={"status": "success", "data": {"runs": []}}),
        Reply(json={"status": "success", "data": {"tests": [{"name": "no url"}]}}),
    ],
    ids=["html", "no-tests-key", "test-without-url"],
)
async def test_an_answer_not_of_the_api_s_shape_means_unavailable(
    aiohttp_client: ClientFactory,
    api: FakeChat,
    fake_chat: FakeChat,
    tmp_path: Path,
    answer: Reply,
) -> None:
    api.default(RUN_TESTS, answer)
    config = config_for(tmp_path, fake_chat, jobserv_keys(api), destinations=("generic",))
    client = await aiohttp_client(create_app(config))
    await post(client, fixture_body(FAILED))

    [message] = await fake_chat.wait_for(1, path="/generic")
    assert failed_run(message.json)["tests_unavailable"] is True
    assert [r.path for r in api.requests] == [RUN_TESTS]


async def test_a_redirect_is_not_followed_with_the_token(
    aiohttp_client: ClientFactory, api: FakeChat, fake_chat: FakeChat, tmp_path: Path
) -> None:
    serve_tests(api, [LINT])
    # Where the redirect leads would answer; the token must not be taken there.
    api.script(RUN_TESTS, Reply(302, headers={"Location": api.url("/elsewhere" + RUN_TESTS)}))
    api.default("/elsewhere" + RUN_TESTS, list_answer([LINT]))
    config = config_for(tmp_path, fake_chat, jobserv_keys(api), destinations=("generic",))
    client = await aiohttp_client(create_app(config))
    await post(client, fixture_body(FAILED))

    [message] = await fake_chat.wait_for(1, path="/generic")
    assert failed_run(message.json)["tests_unavailable"] is True
    assert [r.path for r in api.requests] == [RUN_TESTS]


# --- where the token may go --------------------------------------------------------------------

API_PATH = "/jobserv"


@pytest.mark.parametrize(
    "escape",
    ["/..", "/%2e%2e", "/%2E%2E", "/.%2e", "/%2e.", "/%252e%252e", "/x/../..", "/..%2fx"],
)
async def test_a_tests_url_leading_out_of_the_api_path_is_never_asked(
    aiohttp_client: ClientFactory, api: FakeChat, fake_chat: FakeChat, tmp_path: Path, escape: str
) -> None:
    # Inside and outside api_url's path, the fake API would answer: only the path decides.
    api.default(API_PATH + RUN_TESTS, list_answer([LINT]))
    api.default("/outside" + RUN_TESTS, list_answer([LINT]))
    api.default(RUN_TESTS, list_answer([LINT]))
    tests_url = PUBLIC_API + escape + "/outside" + RUN_TESTS
    body = with_tests_url(fixture_body(FAILED), "build-armhf", tests_url)
    keys = f'api_token = "{TOKEN}"\napi_url = "{api.base_url}{API_PATH}/"\ntimeout = "2s"'
    config = config_for(tmp_path, fake_chat, keys, destinations=("generic",))
    client = await aiohttp_client(create_app(config))
    await post(client, body)

    [message] = await fake_chat.wait_for(1, path="/generic")
    assert failed_run(message.json)["tests_unavailable"] is True
    assert api.requests == []
    assert all(TOKEN not in r.text for r in fake_chat.requests)


async def test_tests_urls_are_asked_of_the_api_only_and_within_its_path(
    aiohttp_client: ClientFactory, api: FakeChat, fake_chat: FakeChat, tmp_path: Path
) -> None:
    api.default(API_PATH + RUN_TESTS, list_answer([LINT]))
    api.default(API_PATH + LINT.path, Reply(json={"status": "success", "data": {"test": {}}}))
    async with FakeChat() as elsewhere:
        elsewhere.default(None, list_answer([LINT]))
        # Another host, and a `..` that stays inside the API's path: both asked of the API.
        tests_url = elsewhere.url(RUN_TESTS + "../tests/")
        body = with_tests_url(fixture_body(FAILED), "build-armhf", tests_url)
        keys = f'api_token = "{TOKEN}"\napi_url = "{api.base_url}{API_PATH}/"\ntimeout = "2s"'
        config = config_for(tmp_path, fake_chat, keys, destinations=("generic",))
        client = await aiohttp_client(create_app(config))
        await post(client, body)

        [message] = await fake_chat.wait_for(1, path="/generic")
        assert [t["name"] for t in failed_run(message.json)["failed_tests"]] == ["lint"]
        assert elsewhere.requests == []
    assert api.requests[0].path == API_PATH + RUN_TESTS
    assert all(r.path.startswith(API_PATH + "/") for r in api.requests)


# --- asking once -----------------------------------------------------------------------------


async def test_a_build_sent_to_two_destinations_and_retried_is_looked_up_once(
    aiohttp_client: ClientFactory, api: FakeChat, fake_chat: FakeChat, tmp_path: Path
) -> None:
    serve_tests(api, [UNIT_TESTS, LINT])
    fake_chat.script("/a", Reply(500, "busy"))
    config = config_for(tmp_path, fake_chat, jobserv_keys(api), destinations=("a", "b"))
    client = await aiohttp_client(create_app(config))
    await post(client, fixture_body(FAILED))

    first, retried = await fake_chat.wait_for(2, path="/a")
    [other] = await fake_chat.wait_for(1, path="/b")
    await wait_sent(client, "a")
    await wait_sent(client, "b")

    names = [[t["name"] for t in failed_run(m.json)["failed_tests"]] for m in (retried, other)]
    assert names == [["unit-tests", "lint"], ["unit-tests", "lint"]]
    assert first.json == retried.json
    assert sorted(r.path for r in api.requests) == sorted([RUN_TESTS, UNIT_TESTS.path, LINT.path])


async def test_a_failed_lookup_is_tried_again_when_the_message_is_retried(
    aiohttp_client: ClientFactory, api: FakeChat, fake_chat: FakeChat, tmp_path: Path
) -> None:
    serve_tests(api, [LINT])
    api.script(RUN_TESTS, Reply(503, "maintenance"))
    fake_chat.script("/generic", Reply(500, "busy"))
    config = config_for(tmp_path, fake_chat, jobserv_keys(api), destinations=("generic",))
    client = await aiohttp_client(create_app(config))
    await post(client, fixture_body(FAILED))

    first, retried = await fake_chat.wait_for(2, path="/generic")
    assert failed_run(first.json)["tests_unavailable"] is True
    assert failed_run(retried.json)["tests_unavailable"] is False
    assert [t["name"] for t in failed_run(retried.json)["failed_tests"]] == ["lint"]
    assert len(api.requests_to(RUN_TESTS)) == 2


# --- limits ------------------------------------------------------------------------------------


async def test_at_most_max_failed_tests_are_looked_up_per_run(
    aiohttp_client: ClientFactory, api: FakeChat, fake_chat: FakeChat, tmp_path: Path
) -> None:
    failing = [FakeTest(f"suite-{n}", results=[("case", "FAILED")]) for n in range(1, 5)]
    serve_tests(api, [SMOKE, *failing])
    config = config_for(tmp_path, fake_chat, jobserv_keys(api, "max_failed_tests = 2"))
    client = await aiohttp_client(create_app(config))
    await post(client, fixture_body(FAILED))

    [slack] = await fake_chat.wait_for(1, path="/slack")
    [generic] = await fake_chat.wait_for(1, path="/generic")
    section = run_section(slack.json)
    assert section.endswith(
        "\n• suite-1 — 1 failed: case\n• suite-2 — 1 failed: case\n…and 2 more failed tests"
    )
    run = failed_run(generic.json)
    assert [t["name"] for t in run["failed_tests"]] == ["suite-1", "suite-2"]
    assert run["more_failed_tests"] == 2
    asked = {r.path for r in api.requests}
    assert asked == {RUN_TESTS, failing[0].path, failing[1].path}


async def test_a_long_list_of_failed_tests_is_cut_to_fit_a_slack_section(
    aiohttp_client: ClientFactory, api: FakeChat, fake_chat: FakeChat, tmp_path: Path
) -> None:
    results = [(f"case-{'x' * 70}-{n}", "FAILED") for n in range(5)]
    failing = [FakeTest(f"suite-{n:02}-{'y' * 120}", results=results) for n in range(40)]
    serve_tests(api, failing)
    config = config_for(
        tmp_path, fake_chat, jobserv_keys(api, "max_failed_tests = 40"), destinations=("slack",)
    )
    client = await aiohttp_client(create_app(config))
    await post(client, fixture_body(FAILED))

    [message] = await fake_chat.wait_for(1, path="/slack")
    section = run_section(message.json)
    assert len(section) <= SLACK_SECTION_LIMIT
    lines = section.split("\n")
    listed = [line for line in lines if line.startswith("• suite-")]
    assert 5 <= len(listed) < 40
    assert lines[-1] == f"…and {40 - len(listed)} more failed tests"
    assert listed[0].startswith("• suite-00-")


# --- not looked up -----------------------------------------------------------------------------


async def test_without_a_jobserv_section_nothing_is_fetched(
    aiohttp_client: ClientFactory, api: FakeChat, fake_chat: FakeChat, tmp_path: Path
) -> None:
    serve_tests(api, [LINT])
    body = with_tests_url(fixture_body(FAILED), "build-armhf", api.url(RUN_TESTS))
    client = await aiohttp_client(create_app(config_for(tmp_path, fake_chat, None)))
    await post(client, body)

    [slack] = await fake_chat.wait_for(1, path="/slack")
    [generic] = await fake_chat.wait_for(1, path="/generic")
    assert api.requests == []
    assert "\n" not in run_section(slack.json)  # the run's line, with no tests or note
    assert "failed_tests" not in failed_run(generic.json)


async def test_only_failed_runs_with_tests_are_looked_up(
    aiohttp_client: ClientFactory, api: FakeChat, fake_chat: FakeChat, tmp_path: Path
) -> None:
    serve_tests(api, [LINT])
    body = with_tests_url(fixture_body(FAILED), "build-armhf", None)
    passed_run_tests = "/projects/andy-corp/lmp/builds/68/runs/build-aarch64/tests/"
    body = with_tests_url(body, "build-aarch64", PUBLIC_API + passed_run_tests)
    config = config_for(tmp_path, fake_chat, jobserv_keys(api), destinations=("generic",))
    client = await aiohttp_client(create_app(config))
    await post(client, body)

    [message] = await fake_chat.wait_for(1, path="/generic")
    assert api.requests == []
    assert "failed_tests" not in failed_run(message.json)


async def test_a_reload_that_adds_the_jobserv_section_starts_the_lookups(
    aiohttp_client: ClientFactory, api: FakeChat, fake_chat: FakeChat, tmp_path: Path
) -> None:
    serve_tests(api, [LINT])
    config = config_for(tmp_path, fake_chat, None, destinations=("generic",))
    client = await aiohttp_client(create_app(config))
    config_for(tmp_path, fake_chat, jobserv_keys(api), destinations=("generic",))
    assert await client.app[RUNTIME].reload()
    await post(client, fixture_body(FAILED))

    [message] = await fake_chat.wait_for(1, path="/generic")
    assert [t["name"] for t in failed_run(message.json)["failed_tests"]] == ["lint"]
    assert all(r.headers.get("OSF-TOKEN") == TOKEN for r in api.requests)


# --- preview and config ------------------------------------------------------------------------


async def test_render_previews_the_failed_tests(
    api: FakeChat, fake_chat: FakeChat, tmp_path: Path
) -> None:
    serve_tests(api, [UNIT_TESTS, LINT])
    config = config_for(tmp_path, fake_chat, jobserv_keys(api), destinations=("console",))
    payload = tmp_path / "build.json"
    payload.write_bytes(fixture_body(FAILED))
    result = await asyncio.to_thread(
        run_cli, "render", "--config", config.path, "--payload", payload
    )
    assert result.returncode == 0, result.stderr
    assert "failed test: unit-tests (4 failed: net-a, net-b, net-c, …)" in result.stdout
    assert "failed test: lint (1 failed: shellcheck)" in result.stdout
    assert all(r.headers.get("OSF-TOKEN") == TOKEN for r in api.requests)
    assert fake_chat.requests == []


@pytest.mark.parametrize(
    ("keys", "problem"),
    [
        ('api_url = "https://api.foundries.io/"', "jobserv.api_token: missing"),
        ('api_token = ""', "jobserv.api_token: must not be empty"),
        (
            'api_token = "t"\napi_url = "api.foundries.io"',
            "jobserv.api_url: expected an http(s)://HOST[:PORT]/ URL",
        ),
        ('api_token = "t"\nmax_failed_tests = 0', "jobserv.max_failed_tests: "),
        (
            'api_token = "t"\ntimeout = "2m"',
            "jobserv.timeout: must be more than 0s and at most 30s",
        ),
        ('api_token = "t"\ntoken = "x"', "jobserv.token: unknown key"),
    ],
)
def test_the_jobserv_section_is_checked(tmp_path: Path, keys: str, problem: str) -> None:
    with pytest.raises(ConfigError) as raised:
        config_for(tmp_path, None, keys, destinations=("console",))
    assert any(p.startswith(problem) for p in raised.value.problems), raised.value.problems
