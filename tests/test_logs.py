"""The logs of a full `python -m bridge serve` run: the lines operators read, and no secret.

A bridge with every kind of secret (a webhook secret, a Slack webhook URL, a Slack
token, a generic webhook's URL and header token) runs against fake chats whose
error answers echo those secrets back, and gets a badly signed request too.
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import textwrap
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bridge.logs import (
    _ESCAPED_CONTROLS,
    WRITE_AT,
    WRITE_EVERY,
    BatchedWriter,
    HumanFormatter,
    JsonFormatter,
    one_line,
)
from bridge.redact import Redactor
from bridge.store import DeliveryRow, open_store
from tests.conftest import signed_headers
from tests.fakes.chat_server import FakeChat, Reply, SlackApiError
from tests.serve import BridgeProcess, event_body, free_port

WEBHOOK_SECRET = "whsec-WebhookSecretValue-5f3a"
SLACK_HOOK_PATH = "/services/T000/B000/SlackHookPathSecret7c1d"
SLACK_TOKEN = "xoxb-1111-2222-SlackBotTokenSecret9e2b"
GENERIC_PATH = "/generic/GenericUrlPathSecret3a8f"
HEADER_TOKEN = "Bearer HeaderTokenSecret-0d4e"
ACCEPTED_BUILDS = (1, 2)
WANTED_FIELDS = ("event_id", "factory", "build")


def secrets(fake: FakeChat) -> list[str]:
    """What must never be logged: whole URLs and tokens, and their secret parts alone."""
    return [
        WEBHOOK_SECRET,
        fake.url(SLACK_HOOK_PATH),
        SLACK_HOOK_PATH,
        "SlackHookPathSecret7c1d",
        SLACK_TOKEN,
        "SlackBotTokenSecret9e2b",
        fake.url(GENERIC_PATH),
        "GenericUrlPathSecret3a8f",
        HEADER_TOKEN,
        "HeaderTokenSecret-0d4e",
    ]


def write_config(path: Path, port: int, fake: FakeChat) -> None:
    text = f"""
        [server]
        host = "127.0.0.1"
        port = {port}
        shutdown_timeout = "2s"

        [store]
        path = "bridge.sqlite3"

        [delivery]
        retry_initial = "0.05s"
        retry_max = "0.2s"
        poll_interval = "0.05s"

        [[sources]]
        name = "docs-example"
        secret = "{WEBHOOK_SECRET}"
        factories = ["*"]

        [[destinations]]
        name = "slack-hook"
        type = "slack-webhook"
        url = "{fake.url(SLACK_HOOK_PATH)}"
        timeout = "0.5s"
        rate_limit = 0

        [[destinations]]
        name = "slack-bot"
        type = "slack-api"
        token = "{SLACK_TOKEN}"
        channel = "C0123"
        api_url = "{fake.url("/api/")}"
        timeout = "0.5s"
        rate_limit = 0

        [[destinations]]
        name = "generic"
        type = "generic"
        url = "{fake.url(GENERIC_PATH)}"
        headers = {{ Authorization = "{HEADER_TOKEN}" }}
        timeout = "0.5s"
        rate_limit = 0
        max_attempts = 2

        [[destinations]]
        name = "plain"
        type = "generic"
        url = "{fake.url("/plain")}"
        timeout = "0.5s"
        rate_limit = 0

        [[routes]]
        notify = ["failed", "passed"]
        destinations = ["slack-hook", "slack-bot", "generic", "plain"]
        """
    path.write_text(textwrap.dedent(text))


def script_echoing_chats(fake: FakeChat) -> None:
    """Error answers that carry the secrets back, as careless servers and proxies do."""
    slack_url = fake.url(SLACK_HOOK_PATH)
    fake.default(
        SLACK_HOOK_PATH,
        Reply(404, f"no_service: no hook at {slack_url} (Cannot POST {SLACK_HOOK_PATH})"),
    )
    fake.default("/api/chat.postMessage", SlackApiError("invalid_auth"))
    fake.default(
        GENERIC_PATH,
        Reply(500, f"upstream failed: POST {fake.url(GENERIC_PATH)} with {HEADER_TOKEN}"),
    )
    fake.default("/plain", Reply(200))


@pytest.fixture
async def run_logs(fake_chat: FakeChat, tmp_path: Path) -> AsyncIterator[Any]:
    """Runs a full bridge life with these serve arguments; returns (stdout, stderr, outbox)."""
    made: list[BridgeProcess] = []

    async def run(*args: str) -> tuple[str, str, list[DeliveryRow]]:
        logs = tmp_path / f"logs-{len(made)}"
        logs.mkdir()
        folder = tmp_path / f"run-{len(made)}"
        folder.mkdir()
        bridge = BridgeProcess(folder / "config.toml", free_port(), logs, args)
        made.append(bridge)
        write_config(bridge.config, bridge.port, fake_chat)
        script_echoing_chats(fake_chat)
        await bridge.start()

        for number in ACCEPTED_BUILDS:
            body = event_body(number)
            headers = signed_headers(body, WEBHOOK_SECRET)
            async with bridge.session.post(
                f"{bridge.base_url}/webhook", data=body, headers=headers
            ) as answer:
                assert answer.status == 202
            async with bridge.session.post(  # a repeat
                f"{bridge.base_url}/webhook", data=body, headers=headers
            ) as answer:
                assert answer.status == 200
        body = event_body(99)
        async with bridge.session.post(
            f"{bridge.base_url}/webhook", data=body, headers=signed_headers(body, "wrong-secret")
        ) as answer:
            assert answer.status == 401

        store_path = folder / "bridge.sqlite3"
        rows = await settled_outbox(store_path)
        bridge.send_signal(signal.SIGTERM)
        assert await bridge.wait_exit(timeout=5.0) == 0
        return bridge.stdout(), bridge.stderr(), rows

    try:
        yield run
    finally:
        for bridge in made:
            await bridge.close()


async def settled_outbox(store_path: Path, timeout: float = 8.0) -> list[DeliveryRow]:  # noqa: ASYNC109
    """Poll until every delivery is sent or dead (generic gives up after its 2 attempts)."""
    wanted = len(ACCEPTED_BUILDS) * 4
    store = open_store(str(store_path))
    await store.open(serving=False)
    try:
        deadline = time.monotonic() + timeout
        while True:
            rows = await store.list_deliveries()
            if len(rows) == wanted and all(row.state != "pending" for row in rows):
                return rows
            if time.monotonic() > deadline:
                pytest.fail(f"deliveries not settled within {timeout}s: {rows}")
            await asyncio.sleep(0.05)
    finally:
        await store.close()


def assert_no_secret(fake: FakeChat, stdout: str, stderr: str) -> None:
    for secret in secrets(fake):
        assert secret not in stdout, f"{secret!r} in stdout:\n{stdout}"
        assert secret not in stderr, f"{secret!r} in stderr:\n{stderr}"


def assert_outcomes_as_expected(fake: FakeChat, rows: list[DeliveryRow]) -> None:
    """The run went as scripted, so the logs had every kind of line to write.

    The errors kept in the outbox (shown by `outbox list`) hold no secret either.
    """
    assert_no_secret(fake, "", "\n".join(row.last_error or "" for row in rows))
    states = {(row.destination, row.state, row.attempts) for row in rows}
    assert states == {
        ("slack-hook", "dead", 1),
        ("slack-bot", "dead", 1),
        ("generic", "dead", 2),
        ("plain", "sent", 1),
    }


@pytest.mark.parametrize("level", ["info", "debug"])
async def test_human_logs_hold_no_secret_and_a_line_per_outcome(
    level: str, run_logs: Any, fake_chat: FakeChat
) -> None:
    stdout, stderr, rows = await run_logs("--log-level", level)
    assert_outcomes_as_expected(fake_chat, rows)
    assert_no_secret(fake_chat, stdout, stderr)
    assert "<redacted>" in stderr  # the echoed secrets were there to be removed
    assert "Traceback" not in stderr

    lines = stderr.splitlines()
    accepted = [line for line in lines if "accepted from source docs-example" in line]
    assert len(accepted) == len(ACCEPTED_BUILDS)
    for line, number in zip(accepted, ACCEPTED_BUILDS, strict=True):
        assert "andy-corp" in line
        assert f"#{number}" in line
    for row in rows:
        about = [line for line in lines if f"delivery {row.id} of event {row.event_id} " in line]
        assert len(about) == row.attempts, (row, about)
        assert all(row.destination in line for line in about)
        assert all(f"#{row.build_id}" in line for line in about)


@pytest.mark.parametrize("level", ["info", "debug"])
async def test_json_logs_hold_no_secret_and_a_structured_line_per_outcome(
    level: str, run_logs: Any, fake_chat: FakeChat
) -> None:
    stdout, stderr, rows = await run_logs("--log-format", "json", "--log-level", level)
    assert_outcomes_as_expected(fake_chat, rows)
    assert_no_secret(fake_chat, stdout, stderr)

    entries: list[dict[str, Any]] = []
    for line in stderr.splitlines():
        entry = json.loads(line)
        assert isinstance(entry, dict), line
        assert {"time", "level", "logger", "message"} <= entry.keys(), line
        entries.append(entry)
    assert "<redacted>" in json.dumps(entries)

    accepted = [e for e in entries if e["logger"] == "bridge.intake" and "accepted" in e["message"]]
    assert [e["build"] for e in accepted] == list(ACCEPTED_BUILDS)
    for entry in accepted:
        assert entry["factory"] == "andy-corp"
        assert isinstance(entry["event_id"], int)
        assert entry["source"] == "docs-example"

    outcomes = [e for e in entries if "outcome" in e]
    assert all(e["logger"] == "bridge.delivery" for e in outcomes)
    for entry in outcomes:
        assert all(field in entry for field in (*WANTED_FIELDS, "destination")), entry
        if entry["outcome"] != "sent":
            assert entry["reason"], entry
    for row in rows:
        about = [e for e in outcomes if e["delivery_id"] == row.id]
        assert len(about) == row.attempts, (row, about)
        assert {(e["event_id"], e["build"], e["destination"]) for e in about} == {
            (row.event_id, row.build_id, row.destination)
        }
        assert about[-1]["outcome"] == row.state

    generic = [e for e in outcomes if e["destination"] == "generic"]
    assert [e["outcome"] for e in generic] == ["retry", "dead"] * len(ACCEPTED_BUILDS)
    assert all("500" in e["reason"] for e in generic)
    slack = [e for e in outcomes if e["destination"] == "slack-hook"]
    assert all("404" in e["reason"] and "no_service" in e["reason"] for e in slack)


@given(st.text())
def test_a_line_without_controls_is_left_as_it_is_and_any_other_escaped(text: str) -> None:
    assert one_line(text) == text.translate(_ESCAPED_CONTROLS)


# Shared by the examples: what each keeps from one record's time must not leak into the next.
HUMAN, STRUCTURED = HumanFormatter(Redactor([])), JsonFormatter(Redactor([]))


@given(
    created=st.one_of(st.floats(min_value=0, max_value=4e9), st.sampled_from([1e9, 1e9 + 0.5])),
    message=st.text(max_size=50),
)
def test_a_lines_time_is_the_records_as_logging_writes_it(created: float, message: str) -> None:
    """Each formatter makes the time text once a second: it must still be each record's."""
    record = logging.makeLogRecord({"name": "bridge", "levelno": 20, "levelname": "INFO"})
    record.msg, record.created = message, created
    record.msecs = (created - int(created)) * 1000
    human, structured = HUMAN, STRUCTURED
    for _ in range(2):  # the second time from what was kept
        assert human.format(record).startswith(logging.Formatter().formatTime(record) + " ")
        expected = logging.Formatter().formatTime(record, "%Y-%m-%dT%H:%M:%S")
        assert (
            json.loads(structured.format(record))["time"] == f"{expected}.{int(record.msecs):03d}"
        )


class Writes:
    """A stream that keeps each write apart."""

    def __init__(self) -> None:
        self.writes: list[str] = []

    def write(self, text: str) -> int:
        self.writes.append(text)
        return len(text)

    def flush(self) -> None:
        pass


def turn_logger(stream: Writes) -> logging.Logger:
    logger = logging.getLogger(f"test-turn-{id(stream)}")
    logger.propagate = False
    handler = BatchedWriter(stream)  # type: ignore[arg-type]
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    logger.handlers[:] = [handler]
    logger.setLevel(logging.INFO)
    return logger


async def test_the_lines_of_the_loop_are_written_together_soon_after_the_first() -> None:
    stream = Writes()
    log = turn_logger(stream)
    log.info("one")
    await asyncio.sleep(0)  # the loop's other work goes on
    log.info("two")
    assert stream.writes == []
    await asyncio.sleep(WRITE_EVERY + 0.05)
    assert stream.writes == ["INFO one\nINFO two\n"]
    log.info("three")
    await asyncio.sleep(WRITE_EVERY + 0.05)
    assert stream.writes[1:] == ["INFO three\n"]


async def test_lines_waiting_are_written_at_once_when_they_grow_long() -> None:
    stream = Writes()
    log = turn_logger(stream)
    line = "x" * 1000
    for _ in range(WRITE_AT // 1000 + 1):
        log.info(line)
    assert len(stream.writes) == 1 and stream.writes[0].count(line) == WRITE_AT // 1000 + 1


async def test_a_warning_and_another_threads_line_are_written_at_once_in_order() -> None:
    stream = Writes()
    log = turn_logger(stream)
    log.info("before")
    log.warning("trouble")
    assert "".join(stream.writes) == "INFO before\nWARNING trouble\n"
    log.info("queued")
    await asyncio.to_thread(log.info, "from a thread")
    assert "".join(stream.writes).endswith("INFO queued\nINFO from a thread\n")
    await asyncio.sleep(WRITE_EVERY + 0.05)  # its timer finds nothing left to write
    assert "".join(stream.writes).count("queued") == 1


def test_without_a_loop_a_line_is_written_at_once_and_a_flush_leaves_none_behind() -> None:
    stream = Writes()
    log = turn_logger(stream)
    log.info("now")
    assert stream.writes == ["INFO now\n"]

    async def log_and_stop() -> None:
        log.info("last")  # the loop ends before its timer: the exit's flush writes it

    loop = asyncio.new_event_loop()
    loop.run_until_complete(log_and_stop())
    loop.close()
    logging.getLogger(log.name).handlers[0].flush()
    assert "".join(stream.writes) == "INFO now\nINFO last\n"
