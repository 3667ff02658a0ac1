"""GET /metrics as Prometheus scrapes it: the numbers follow the events through the bridge.

The real app runs in-process with a real SQLite outbox; fake chats answer each
destination in their own way, and every check parses a scrape of /metrics.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from aiohttp.test_utils import TestClient
from prometheus_client.parser import text_string_to_metric_families

from bridge.config import Config
from bridge.server import RUNTIME, create_app
from bridge.store import DeliveryRow, Store
from tests.conftest import (
    FAILED,
    FAST_DELIVERY,
    SECRET,
    fixture_body,
    generic_destination,
    make_config,
    signed_headers,
)
from tests.fakes.chat_server import FakeChat, Reply

Client = TestClient[Any, Any]
ClientFactory = Callable[[Any], Awaitable[Client]]

OTHER_SECRET = "AnotherFactorysOwnSecret"
MAX_BODY = 65536

CONFIG = (
    """
[server]
shutdown_timeout = "0.5s"
max_body_size = {max_body}
"""
    + FAST_DELIVERY
    + """
[[sources]]
name = "jobserv"
secret = "{secret}"
factories = ["andy-corp"]
[[sources]]
name = "other-factory"
secret = "{other_secret}"
factories = ["someone-else"]
{destinations}
[[routes]]
notify = ["failed", "passed"]
destinations = {names}
"""
)


def write_config(folder: Path, fake: FakeChat, names: list[str]) -> Config:
    return make_config(
        folder,
        CONFIG.format(
            max_body=MAX_BODY,
            secret=SECRET,
            other_secret=OTHER_SECRET,
            destinations="".join(generic_destination(fake, name) for name in names),
            names=json.dumps(names),
        ),
    )


Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


async def scrape(client: Client) -> Samples:
    response = await client.get("/metrics")
    assert response.status == 200
    assert response.headers["Content-Type"].startswith("text/plain")
    samples: Samples = {}
    for family in text_string_to_metric_families(await response.text()):
        assert family.name.startswith("jobserv_bridge_"), family.name
        for sample in family.samples:
            samples[sample.name, frozenset(sample.labels.items())] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    """The sample with exactly these labels; a labelled series not yet seen counts as 0."""
    return samples.get((name, frozenset(labels.items())), 0.0)


def build_body(build_id: int) -> bytes:
    data = json.loads(fixture_body(FAILED))
    data["build_id"] = build_id
    data["url"] = f"https://api.foundries.io/projects/andy-corp/lmp/builds/{build_id}/"
    return json.dumps(data).encode()


async def wait_for_delivery(
    store: Store,
    destination: str,
    done: Callable[[DeliveryRow], bool],
    timeout: float = 5.0,  # noqa: ASYNC109 (a deadline, in seconds)
) -> DeliveryRow:
    """Poll the outbox until the (only) delivery to `destination` is `done`."""
    deadline = time.monotonic() + timeout
    while True:
        rows = await store.list_deliveries(destination=destination)
        if rows and done(rows[0]):
            return rows[0]
        if time.monotonic() > deadline:
            raise AssertionError(f"delivery to {destination} not there yet: {rows}")
        await asyncio.sleep(0.02)


async def test_webhooks_are_counted_by_outcome(
    tmp_path: Path, fake_chat: FakeChat, aiohttp_client: ClientFactory
) -> None:
    client = await aiohttp_client(create_app(write_config(tmp_path, fake_chat, ["ok"])))
    before = await scrape(client)
    for outcome in ("accepted", "duplicate", "400", "401", "403", "413"):
        assert value(before, "jobserv_bridge_webhooks_received_total", outcome=outcome) == 0

    body = build_body(1)
    answers = [
        await client.post("/webhook", data=body, headers=signed_headers(body)),
        await client.post("/webhook", data=body, headers=signed_headers(body)),
        await client.post("/webhook", data=body),
        await client.post("/webhook", data=body, headers=signed_headers(body, "not-the-secret")),
        await client.post("/webhook", data=body, headers=signed_headers(body, OTHER_SECRET)),
        await client.post("/webhook", data=b"[]", headers=signed_headers(b"[]")),
        await client.post(
            "/webhook", data=b"x" * (MAX_BODY + 1), headers=signed_headers(b"x" * (MAX_BODY + 1))
        ),
    ]
    assert [a.status for a in answers] == [202, 200, 401, 401, 403, 400, 413]

    after = await scrape(client)
    expected = {"accepted": 1, "duplicate": 1, "401": 2, "403": 1, "400": 1, "413": 1}
    for outcome, count in expected.items():
        assert value(after, "jobserv_bridge_webhooks_received_total", outcome=outcome) == count


async def test_deliveries_by_destination_outcome_and_reason(
    tmp_path: Path, fake_chat: FakeChat, aiohttp_client: ClientFactory
) -> None:
    fake_chat.script("/flaky", Reply(503, "busy"))  # then the default 200
    fake_chat.default("/gone", Reply(404, "no_service"))
    fake_chat.default("/stuck", Reply(503, "down for maintenance", headers={"Retry-After": "3600"}))
    config = write_config(tmp_path, fake_chat, ["ok", "flaky", "gone", "stuck"])
    client = await aiohttp_client(create_app(config))
    store = client.app[RUNTIME].store

    body = build_body(7)
    assert (await client.post("/webhook", data=body, headers=signed_headers(body))).status == 202
    await wait_for_delivery(store, "ok", lambda row: row.state == "sent")
    await wait_for_delivery(store, "flaky", lambda row: row.state == "sent")
    await wait_for_delivery(store, "gone", lambda row: row.state == "dead")
    stuck = await wait_for_delivery(store, "stuck", lambda row: row.attempts == 1)
    assert stuck.state == "pending"

    samples = await scrape(client)
    deliveries = "jobserv_bridge_deliveries_total"
    assert value(samples, deliveries, destination="ok", outcome="sent", reason="") == 1
    assert value(samples, deliveries, destination="flaky", outcome="retry", reason="http_503") == 1
    assert value(samples, deliveries, destination="flaky", outcome="sent", reason="") == 1
    assert value(samples, deliveries, destination="gone", outcome="dead", reason="http_404") == 1
    assert value(samples, deliveries, destination="gone", outcome="sent", reason="") == 0
    assert value(samples, deliveries, destination="stuck", outcome="retry", reason="http_503") == 1

    retries = "jobserv_bridge_retries_total"
    assert value(samples, retries, destination="ok") == 0
    assert value(samples, retries, destination="flaky") == 1
    assert value(samples, retries, destination="stuck") == 1

    pending = "jobserv_bridge_pending_deliveries"
    oldest = "jobserv_bridge_oldest_pending_age_seconds"
    assert {name: value(samples, pending, destination=name) for name in config.destinations} == {
        "ok": 0,
        "flaky": 0,
        "gone": 0,
        "stuck": 1,
    }
    assert value(samples, oldest, destination="ok") == 0
    first_age = value(samples, oldest, destination="stuck")
    assert 0 < first_age < 10
    assert value(samples, "jobserv_bridge_dead_letters", destination="gone") == 1
    assert value(samples, "jobserv_bridge_dead_letters", destination="ok") == 0

    # Every answer a chat gave was timed; only messages that went out count from acceptance.
    sends = "jobserv_bridge_send_duration_seconds_count"
    assert value(samples, sends, destination="ok") == 1
    assert value(samples, sends, destination="flaky") == 2
    assert value(samples, sends, destination="gone") == 1
    assert value(samples, sends, destination="stuck") == 1
    assert value(samples, "jobserv_bridge_send_duration_seconds_sum", destination="flaky") > 0
    accepted_to_sent = "jobserv_bridge_accept_to_sent_seconds_count"
    assert value(samples, accepted_to_sent, destination="ok") == 1
    assert value(samples, accepted_to_sent, destination="flaky") == 1
    assert value(samples, accepted_to_sent, destination="gone") == 0
    assert value(samples, accepted_to_sent, destination="stuck") == 0
    # The retried message waited at least one backoff before it was sent.
    flaky_wait = value(samples, "jobserv_bridge_accept_to_sent_seconds_sum", destination="flaky")
    ok_wait = value(samples, "jobserv_bridge_accept_to_sent_seconds_sum", destination="ok")
    assert flaky_wait > ok_wait
    assert flaky_wait >= 0.025  # backoff(1, 0.05s) is at least half of retry_initial

    # The age of what waits keeps growing while it waits.
    await asyncio.sleep(0.1)
    assert value(await scrape(client), oldest, destination="stuck") >= first_age + 0.1


async def test_pending_gauges_cover_destinations_without_traffic(
    tmp_path: Path, fake_chat: FakeChat, aiohttp_client: ClientFactory
) -> None:
    config = write_config(tmp_path, fake_chat, ["quiet", "also-quiet"])
    client = await aiohttp_client(create_app(config))
    samples = await scrape(client)
    for name in config.destinations:
        assert ("jobserv_bridge_pending_deliveries", frozenset({("destination", name)})) in samples
        assert value(samples, "jobserv_bridge_pending_deliveries", destination=name) == 0
        assert value(samples, "jobserv_bridge_oldest_pending_age_seconds", destination=name) == 0


async def test_config_reloads_are_counted_and_timed(
    tmp_path: Path, fake_chat: FakeChat, aiohttp_client: ClientFactory
) -> None:
    started = time.time()
    config = write_config(tmp_path, fake_chat, ["ok"])
    client = await aiohttp_client(create_app(config))
    reloads = "jobserv_bridge_config_reloads_total"
    last = "jobserv_bridge_config_last_reload_success_timestamp_seconds"

    samples = await scrape(client)
    assert value(samples, reloads, result="success") == 0
    assert value(samples, reloads, result="failure") == 0
    loaded_at = value(samples, last)
    assert started - 1 <= loaded_at <= time.time()

    write_config(tmp_path, fake_chat, ["ok", "new"])
    assert await client.app[RUNTIME].reload()
    samples = await scrape(client)
    assert value(samples, reloads, result="success") == 1
    assert value(samples, reloads, result="failure") == 0
    reloaded_at = value(samples, last)
    assert loaded_at <= reloaded_at <= time.time()
    # The new destination is there: it has a pending gauge of its own now.
    assert ("jobserv_bridge_pending_deliveries", frozenset({("destination", "new")})) in samples

    config.path.write_text(config.path.read_text() + '\n[[routes]]\ndestinations = ["nowhere"]\n')
    assert not await client.app[RUNTIME].reload()
    samples = await scrape(client)
    assert value(samples, reloads, result="success") == 1
    assert value(samples, reloads, result="failure") == 1
    assert value(samples, last) == reloaded_at
