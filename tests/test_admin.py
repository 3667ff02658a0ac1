"""The status page and its JSON API, on the admin listener of a running bridge.

Events flow in through POST /webhook to three generic destinations on a fake chat:
`team-chat` takes everything (200), `old-webhook` was removed (404, so its deliveries
become dead letters) and `busy-chat` asks to be left alone for an hour (429). Then the
admin listener, started by the bridge on 127.0.0.1 with an ephemeral port, is asked.
"""

from __future__ import annotations

import asyncio
import json
import re
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from pytest_aiohttp import AiohttpClient
from yarl import URL

from bridge.admin import SESSION_COOKIE, create_admin_app
from bridge.config import ConfigError, is_loopback
from bridge.server import RUNTIME, create_app
from bridge.store import DeliveryRow, Store
from tests.conftest import FAILED, PASSED, SECRET, fixture_body, make_config, signed_headers
from tests.fakes.chat_server import FakeChat, Reply

Client = TestClient[web.Request, web.Application]

TOKEN = "admin-token-0123456789-abcdef"
TEAM_HOOK = "/hooks/team"
GONE_HOOK = "/hooks/removed"
BUSY_HOOK = "/hooks/busy"
# A generic destination's header value: a secret the page must never show.
HEADER_SECRET = "header-secret-for-the-busy-chat"
FAILED_BUILD_URL = "https://ci.foundries.io/projects/andy-corp/lmp/builds/68"
PASSED_BUILD_URL = "https://ci.foundries.io/projects/andy-corp/lmp/builds/67"


def bridge_toml(fake: FakeChat, admin: str, poll_interval: str = "0.05s") -> str:
    return f"""
        [store]
        path = "bridge.sqlite3"

        [delivery]
        retry_initial = "0.05s"
        retry_max = "0.2s"
        poll_interval = "{poll_interval}"

        [admin]
        port = 0
        {admin}

        [[sources]]
        name = "docs"
        secret = "{SECRET}"
        factories = ["andy-corp"]

        [[destinations]]
        name = "team-chat"
        type = "generic"
        url = "{fake.url(TEAM_HOOK)}"
        timeout = "0.5s"
        rate_limit = 0

        [[destinations]]
        name = "old-webhook"
        type = "generic"
        url = "{fake.url(GONE_HOOK)}"
        timeout = "0.5s"
        rate_limit = 0

        [[destinations]]
        name = "busy-chat"
        type = "generic"
        url = "{fake.url(BUSY_HOOK)}"
        headers = {{ X-Api-Key = "{HEADER_SECRET}" }}
        timeout = "0.5s"
        rate_limit = 0

        [[routes]]
        notify = ["failed", "passed"]
        destinations = ["team-chat", "old-webhook"]

        [[routes]]
        notify = ["failed"]
        destinations = ["busy-chat"]
        """


async def run_bridge(
    aiohttp_client: AiohttpClient,
    tmp_path: Path,
    fake: FakeChat,
    admin: str = "",
    poll_interval: str = "0.05s",
) -> Client:
    """A bridge whose admin listener is on 127.0.0.1; the client talks to its webhook."""
    fake.default(GONE_HOOK, Reply(404, "no_service"))
    fake.default(BUSY_HOOK, Reply(429, "slow down", headers={"Retry-After": "3600"}))
    config = make_config(tmp_path, bridge_toml(fake, admin, poll_interval))
    return await aiohttp_client(create_app(config))


async def post_event(webhook: Client, body: bytes) -> int:
    async with webhook.post("/webhook", data=body, headers=signed_headers(body)) as response:
        assert response.status == 202, await response.text()
        event_id: int = (await response.json())["event_id"]
        return event_id


@dataclass
class Bridge:
    webhook: Client
    admin: aiohttp.ClientSession  # on the admin listener; cookies only when sent by hand
    admin_url: URL

    @property
    def store(self) -> Store:
        return self.webhook.app[RUNTIME].store

    async def post_event(self, body: bytes) -> int:
        return await post_event(self.webhook, body)

    async def page(self, path: str = "/", **kw: Any) -> str:
        async with self.admin.get(path, **kw) as response:
            assert response.status == 200, await response.text()
            assert response.content_type == "text/html"
            return await response.text()

    async def api(self, path: str, **kw: Any) -> Any:
        async with self.admin.get(path, **kw) as response:
            assert response.status == 200, await response.text()
            assert response.content_type == "application/json"
            return await response.json()


Start = Callable[..., Awaitable[Bridge]]


@pytest.fixture
async def start(
    aiohttp_client: AiohttpClient, tmp_path: Path, fake_chat: FakeChat
) -> AsyncIterator[Start]:
    sessions: list[aiohttp.ClientSession] = []

    async def start_bridge(admin: str = "", poll_interval: str = "0.05s") -> Bridge:
        webhook = await run_bridge(aiohttp_client, tmp_path, fake_chat, admin, poll_interval)
        url = webhook.app[RUNTIME].admin.url
        assert url is not None and url.startswith("http://127.0.0.1:")
        session = aiohttp.ClientSession(base_url=url, cookie_jar=aiohttp.DummyCookieJar())
        sessions.append(session)
        return Bridge(webhook, session, URL(url))

    yield start_bridge
    for session in sessions:
        await session.close()


async def settled(store: Store, done: Callable[[list[DeliveryRow]], bool]) -> list[DeliveryRow]:
    """Poll the store until `done` holds for its deliveries (a short deadline)."""
    deadline = time.monotonic() + 5.0
    while True:
        rows = await store.list_deliveries(limit=1000)
        if done(rows):
            return rows
        assert time.monotonic() < deadline, f"deliveries did not settle: {rows}"
        await asyncio.sleep(0.02)


def by_destination(rows: list[DeliveryRow], event_id: int) -> dict[str, DeliveryRow]:
    return {row.destination: row for row in rows if row.event_id == event_id}


async def two_events(bridge: Bridge | Client) -> tuple[int, int]:
    """The failed build 68 and the passed build 67, each delivered as far as it goes."""
    webhook = bridge.webhook if isinstance(bridge, Bridge) else bridge
    failed = await post_event(webhook, fixture_body(FAILED))
    passed = await post_event(webhook, fixture_body(PASSED))

    def done(rows: list[DeliveryRow]) -> bool:
        states = {(r.event_id, r.destination): (r.state, r.attempts) for r in rows}
        return states == {
            (failed, "team-chat"): ("sent", 1),
            (failed, "old-webhook"): ("dead", 1),
            (failed, "busy-chat"): ("pending", 1),
            (passed, "team-chat"): ("sent", 1),
            (passed, "old-webhook"): ("dead", 1),
        }

    await settled(webhook.app[RUNTIME].store, done)
    return failed, passed


def articles(html: str) -> dict[str, str]:
    """Each event's card on the page, by the build link it shows."""
    cards = re.findall(r"<article class=\"event.*?</article>", html, re.S)
    found = {}
    for card in cards:
        link = re.search(r'class="build" href="([^"]+)"', card)
        assert link is not None, card
        found[link.group(1)] = card
    return found


def visible_text(html: str) -> str:
    return " ".join(re.sub(r"<[^>]+>", " ", html).split())


def retry_form(html: str, delivery_id: int) -> dict[str, str]:
    match = re.search(
        rf'<form method="post" action="\./(deliveries/{delivery_id}/retry)" class="inline">\s*'
        r'<input type="hidden" name="csrf" value="([^"]+)">',
        html,
    )
    assert match is not None, f"no retry button for delivery {delivery_id}"
    return {"action": "/" + match.group(1), "csrf": match.group(2)}


# -- what the page and the API show -------------------------------------------------


async def test_page_shows_each_event_with_where_it_was_sent(start: Start) -> None:
    bridge = await start()
    await two_events(bridge)
    html = await bridge.page()

    cards = articles(html)
    assert list(cards) == [PASSED_BUILD_URL, FAILED_BUILD_URL]  # newest first
    failed_card = visible_text(cards[FAILED_BUILD_URL])
    assert "FAILED andy-corp / containers-devel #68" in failed_card
    assert re.search(r"team-chat generic sent \d{4}-\d\d-\d\d [\d:]+ UTC · 1 attempt", failed_card)
    assert "old-webhook generic dead gave up" in failed_card
    assert "HTTP 404: no_service" in failed_card
    # Retry-After: 3600, a moment ago: rounded, 59m 59s is "1h" (the two largest units)
    assert re.search(r"busy-chat generic pending 1 attempt · next in (1h|59m 5\d+s)", failed_card)
    assert "HTTP 429: slow down" in failed_card
    passed_card = visible_text(cards[PASSED_BUILD_URL])
    assert "PASSED andy-corp / containers-devel #67" in passed_card
    assert "busy-chat" not in passed_card  # only failed builds are routed there
    assert re.search(r"<time datetime=\"\d{4}-\d\d-\d\dT[\d:.]+\+00:00\"", cards[FAILED_BUILD_URL])

    text = visible_text(html)
    assert "2 pending" not in text and "1 pending" in text
    assert "2 dead letters" in text
    assert "2 sent (kept)" in text
    # The destinations table: pending and dead per destination, with the oldest age.
    rows = {
        m.group(1): visible_text(m.group(0))
        for m in re.finditer(
            r'<tr class="[a-z]*">\s*<th scope="row"><span class="name">([\w-]+)</span>.*?</tr>',
            html,
            re.S,
        )
    }
    assert rows["team-chat"] == "team-chat generic 0 0"
    assert re.fullmatch(r"old-webhook generic 0 2 oldest \d+s", rows["old-webhook"])
    assert re.fullmatch(r"busy-chat generic 1 oldest \d+s 0", rows["busy-chat"])


async def test_dead_letters_and_pending_deliveries_are_listed_with_their_age(
    start: Start,
) -> None:
    bridge = await start()
    failed, passed = await two_events(bridge)
    rows = await bridge.store.list_deliveries(limit=100)
    html = await bridge.page()

    dead_section = re.search(r'<section class="panel" id="dead-letters".*?</section>', html, re.S)
    assert dead_section is not None
    dead_text = visible_text(dead_section.group(0))
    for event_id, build in ((failed, 68), (passed, 67)):
        delivery = by_destination(rows, event_id)["old-webhook"]
        assert f"#{build}" in dead_text
        assert re.search(rf"delivery {delivery.id} · \d+s old · gave up", dead_text)
        retry_form(dead_section.group(0), delivery.id)  # each has its button
    pending_section = re.search(r'<section class="panel" id="pending".*?</section>', html, re.S)
    assert pending_section is not None
    pending_text = visible_text(pending_section.group(0))
    busy = by_destination(rows, failed)["busy-chat"]
    assert f"busy-chat generic andy-corp / containers-devel #68 FAILED delivery {busy.id}" in (
        pending_text
    )
    assert "HTTP 429: slow down" in pending_text
    assert "Retry" not in pending_text  # only dead letters can be retried


async def test_api_lists_events_deliveries_dead_letters_and_destinations(start: Start) -> None:
    bridge = await start()
    failed, passed = await two_events(bridge)

    events = (await bridge.api("/api/events"))["events"]
    assert [e["id"] for e in events] == [passed, failed]
    newest = events[1]
    assert newest["factory"] == "andy-corp"
    assert newest["trigger"] == "containers-devel"
    assert newest["build_id"] == 68
    assert newest["status"] == "FAILED"
    assert newest["build_url"] == FAILED_BUILD_URL
    assert newest["received_at"].endswith("+00:00")
    deliveries = {d["destination"]: d for d in newest["deliveries"]}
    assert deliveries["team-chat"]["state"] == "sent"
    assert deliveries["team-chat"]["sent_at"] is not None
    assert deliveries["team-chat"]["destination_type"] == "generic"
    assert deliveries["old-webhook"]["state"] == "dead"
    assert deliveries["old-webhook"]["last_error"] == "HTTP 404: no_service"
    assert deliveries["old-webhook"]["sent_at"] is None
    assert deliveries["busy-chat"]["state"] == "pending"
    assert deliveries["busy-chat"]["attempts"] == 1
    assert deliveries["busy-chat"]["next_attempt_at"] > deliveries["busy-chat"]["updated_at"]

    dead = (await bridge.api("/api/dead"))["deliveries"]
    assert [(d["event_id"], d["destination"]) for d in dead] == [
        (passed, "old-webhook"),
        (failed, "old-webhook"),
    ]
    assert dead[0]["event"] == {
        "factory": "andy-corp",
        "trigger": "containers-devel",
        "build_id": 67,
        "status": "PASSED",
    }
    sent = (await bridge.api("/api/deliveries", params={"state": "sent"}))["deliveries"]
    assert {(d["event_id"], d["destination"]) for d in sent} == {
        (failed, "team-chat"),
        (passed, "team-chat"),
    }
    busy = (await bridge.api("/api/deliveries", params={"destination": "busy-chat"}))["deliveries"]
    assert [(d["event_id"], d["state"]) for d in busy] == [(failed, "pending")]
    assert len((await bridge.api("/api/deliveries", params={"limit": "2"}))["deliveries"]) == 2

    destinations = {d["name"]: d for d in (await bridge.api("/api/destinations"))["destinations"]}
    assert list(destinations) == ["team-chat", "old-webhook", "busy-chat"]
    assert destinations["old-webhook"]["dead"] == 2
    assert destinations["old-webhook"]["oldest_dead_age"] > 0
    assert destinations["busy-chat"]["pending"] == 1
    assert destinations["busy-chat"]["oldest_pending_age"] > 0
    assert destinations["team-chat"] == {
        "name": "team-chat",
        "type": "generic",
        "configured": True,
        "pending": 0,
        "oldest_pending_age": None,
        "dead": 0,
        "oldest_dead_age": None,
    }

    only_67 = (await bridge.api("/api/events", params={"build": "67"}))["events"]
    assert [e["id"] for e in only_67] == [passed]
    assert (await bridge.api("/api/events", params={"factory": "other-corp"}))["events"] == []


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("/api/deliveries?state=lost", "state must be one of pending, sent, dead"),
        ("/api/deliveries?limit=0", "limit must be a whole number from 1 to 1000"),
        ("/api/events?limit=many", "limit must be a whole number from 1 to 1000"),
        ("/api/events?build=-3", "build must be a whole number"),
        ("/api/nothing-here", "Not Found"),
    ],
)
async def test_api_answers_a_bad_query_with_a_json_error(
    start: Start, path: str, message: str
) -> None:
    bridge = await start()
    async with bridge.admin.get(path) as response:
        assert response.status in (400, 404)
        assert response.content_type == "application/json"
        error = (await response.json())["error"]
    assert error.startswith(message)


@pytest.mark.parametrize(
    ("method", "path", "headers", "status"),
    [
        ("GET", "/?build=%C2%B2&refresh=%C2%B2&retried=%C2%B2", {}, 200),
        ("GET", "/?build=99999999999999999999999", {}, 200),
        ("GET", "/api/events?build=99999999999999999999999", {}, 400),
        ("GET", "/api/deliveries?limit=%D9%A3", {}, 400),
        ("GET", "/", {"Host": "[::1"}, 421),
        (
            "POST",
            "/api/deliveries/1/retry",
            {"Origin": "http://[::1", "X-Requested-With": "t"},
            403,
        ),
        ("POST", "/deliveries/99999999999999999999/retry", {}, 404),
        (
            "POST",
            "/deliveries/1/retry",
            {"Content-Type": "multipart/form-data; boundary=x"},
            400,
        ),
    ],
)
async def test_odd_requests_get_an_answer_not_a_crash(
    start: Start, method: str, path: str, headers: dict[str, str], status: int
) -> None:
    bridge = await start()
    await two_events(bridge)
    async with bridge.admin.request(method, path, headers=headers, data=b"--y") as response:
        assert response.status == status, await response.text()


async def test_chart_counts_events_failed_builds_and_dead_letters_of_the_last_24_hours(
    start: Start,
) -> None:
    bridge = await start()
    await two_events(bridge)

    hours = (await bridge.api("/api/activity"))["hours"]
    assert len(hours) == 24
    starts = [h["start"] for h in hours]
    assert starts == sorted(starts)
    assert [(h["events"], h["failed_builds"], h["dead_deliveries"]) for h in hours] == [
        (0, 0, 0)
    ] * 23 + [(2, 1, 2)]

    html = await bridge.page()
    chart = re.search(r"<svg class=\"chart\".*?</svg>", html, re.S)
    assert chart is not None
    titles = re.findall(r"<title>(.*?)</title>", chart.group(0))
    assert len(titles) == 24
    assert re.fullmatch(
        r"\d\d:00–\d\d:00 UTC: 2 events, 1 failed build, 2 dead deliveries", titles[-1]
    )
    assert all(t.endswith("0 events, 0 failed builds, 0 dead deliveries") for t in titles[:-1])
    # Drawn to scale: the current hour's events bar is the full height, its failed part half.
    last_hour = chart.group(0).rsplit('<g class="hour">', 1)[1]
    assert 'class="events" x="462" y="0.0" width="11" height="100.0"' in last_hour
    assert 'class="failed" x="462" y="50.0" width="11" height="50.0"' in last_hour
    assert 'class="dead" x="474" y="0.0" width="4" height="100.0"' in last_hour
    assert '<rect class="events"' not in chart.group(0).rsplit('<g class="hour">', 1)[0]
    assert "2 events in 24 h" in visible_text(html)
    assert "1 failed builds in 24 h" in visible_text(html)


async def test_search_finds_one_build(start: Start) -> None:
    bridge = await start()
    await two_events(bridge)
    assert list(articles(await bridge.page("/?build=68"))) == [FAILED_BUILD_URL]
    assert list(articles(await bridge.page("/?build=%2367&factory=andy-corp"))) == [
        PASSED_BUILD_URL
    ]
    html = await bridge.page("/?factory=someone-else")
    assert articles(html) == {}
    assert "No event matches." in html


async def test_secrets_and_webhook_urls_never_reach_the_page_or_the_api(
    start: Start, fake_chat: FakeChat
) -> None:
    bridge = await start(f'token = "{TOKEN}"')
    # A chat that echoes its own URL in an error, and an event that carries secrets.
    fake_chat.default(GONE_HOOK, Reply(404, f"no hook at {fake_chat.url(GONE_HOOK)}"))
    body = json.loads(fixture_body(FAILED))
    body["trigger_name"] = f"leak-{HEADER_SECRET}-{SECRET}"
    body["web_url"] = f"https://ci.example.com/{TOKEN}/builds/68"
    event_id = await bridge.post_event(json.dumps(body).encode())
    await settled(
        bridge.store,
        lambda rows: by_destination(rows, event_id).get("old-webhook", rows[0]).state == "dead",
    )

    auth = {"Authorization": f"Bearer {TOKEN}"}
    outputs = [await bridge.page(headers=auth)]
    for path in ("/api/events", "/api/deliveries", "/api/dead", "/api/destinations"):
        async with bridge.admin.get(path, headers=auth) as response:
            assert response.status == 200
            outputs.append(await response.text())
    for output in outputs:
        for secret in (SECRET, HEADER_SECRET, TOKEN, fake_chat.base_url, GONE_HOOK, BUSY_HOOK):
            assert secret not in output
    assert "leak-&lt;redacted&gt;-&lt;redacted&gt;" in outputs[0]
    assert "no hook at &lt;redacted&gt;" in outputs[0]
    assert '"trigger": "leak-<redacted>-<redacted>"' in outputs[1]


async def test_secrets_a_reload_brings_are_kept_off_the_page_too(
    start: Start, fake_chat: FakeChat
) -> None:
    """The page redacts with the live redactor, which a SIGHUP reload adds secrets to."""
    bridge = await start()
    added_url = fake_chat.url("/hooks/AddedAfterReload-9f8e7d6c")
    config = bridge.webhook.app[RUNTIME].config.path
    config.write_text(
        config.read_text()
        + f"""
        [[destinations]]
        name = "added"
        type = "generic"
        url = "{added_url}"
        """
    )
    assert await bridge.webhook.app[RUNTIME].reload()
    assert "added" in bridge.webhook.app[RUNTIME].config.destinations
    body = json.loads(fixture_body(FAILED))
    body["trigger_name"] = f"posting-to-{added_url}"
    await bridge.post_event(json.dumps(body).encode())

    page = await bridge.page()
    events = json.dumps(await bridge.api("/api/events"))
    for output in (page, events):
        assert "AddedAfterReload" not in output
    assert "posting-to-&lt;redacted&gt;" in page
    assert "posting-to-<redacted>" in events


# -- actions: retry, CSRF ---------------------------------------------------------------


async def test_retry_button_requeues_the_dead_letter_and_it_is_sent(
    start: Start, fake_chat: FakeChat
) -> None:
    # Idle lanes look for work only every minute: the retry itself must wake its lane.
    bridge = await start(poll_interval="60s")
    failed, _ = await two_events(bridge)
    dead = by_destination(await bridge.store.list_deliveries(limit=100), failed)["old-webhook"]
    form = retry_form(await bridge.page(), dead.id)
    fake_chat.default(GONE_HOOK, Reply(200, "ok"))  # the webhook is back
    tried = fake_chat.requests_to(GONE_HOOK)
    before = len(tried)

    async with bridge.admin.post(
        form["action"], data={"csrf": form["csrf"]}, allow_redirects=False
    ) as response:
        assert response.status == 303
        location = response.headers["Location"]
    assert location == f"../../?retried={dead.id}#dead-letters"

    [*_, resent] = await fake_chat.wait_for(before + 1, path=GONE_HOOK)
    # The delivery tried before, under its own key (the same on every try).
    assert resent.headers["Idempotency-Key"] in {r.headers["Idempotency-Key"] for r in tried}
    assert resent.json["build_id"] == 68
    rows = await settled(
        bridge.store, lambda rows: by_destination(rows, failed)["old-webhook"].state == "sent"
    )
    assert by_destination(rows, failed)["old-webhook"].attempts == 1

    page = await bridge.page(f"/?retried={dead.id}")
    assert f"Delivery {dead.id} is queued again." in page
    assert re.search(r"\b1 dead letter(?!s)", visible_text(page))

    async with bridge.admin.post(form["action"], data={"csrf": form["csrf"]}) as response:
        assert response.status == 200  # followed to the page
        assert f"Delivery {dead.id} is not a dead letter." in await response.text()


async def test_form_post_without_the_csrf_token_is_refused(start: Start) -> None:
    bridge = await start()
    failed, _ = await two_events(bridge)
    dead = by_destination(await bridge.store.list_deliveries(limit=100), failed)["old-webhook"]
    form = retry_form(await bridge.page(), dead.id)
    admin_origin = f"http://{bridge.admin_url.raw_authority}"

    attempts: list[tuple[dict[str, str], dict[str, str]]] = [
        ({}, {}),  # no token
        ({"csrf": "guessed"}, {}),  # a wrong one
        ({"csrf": form["csrf"]}, {"Origin": "https://evil.example"}),  # posted by another site
        ({"csrf": form["csrf"]}, {"Origin": "null"}),
        ({"csrf": form["csrf"]}, {"Referer": "https://evil.example/page"}),
    ]
    for data, headers in attempts:
        async with bridge.admin.post(form["action"], data=data, headers=headers) as response:
            assert response.status == 403, (data, headers)
            assert response.content_type == "text/html"
            assert "That did not work" in await response.text()

    rows = await bridge.store.list_deliveries(state="dead", limit=100)
    assert dead.id in [row.id for row in rows]  # still a dead letter

    # The same form from the page itself is accepted.
    async with bridge.admin.post(
        form["action"],
        data={"csrf": form["csrf"]},
        headers={"Origin": admin_origin},
        allow_redirects=False,
    ) as response:
        assert response.status == 303


async def test_api_retry_needs_a_request_a_form_cannot_make(
    start: Start, fake_chat: FakeChat
) -> None:
    bridge = await start()
    _, passed = await two_events(bridge)
    rows = await bridge.store.list_deliveries(limit=100)
    dead = by_destination(rows, passed)["old-webhook"]
    sent = by_destination(rows, passed)["team-chat"]
    path = f"/api/deliveries/{dead.id}/retry"

    async with bridge.admin.post(path, data={"x": "1"}) as response:  # what a form sends
        assert response.status == 403
        assert "X-Requested-With" in (await response.json())["error"]
    fake_chat.default(GONE_HOOK, Reply(200, "ok"))
    before = len(fake_chat.requests_to(GONE_HOOK))
    async with bridge.admin.post(path, json={}) as response:
        assert response.status == 200
        assert await response.json() == {"retried": dead.id}
    await fake_chat.wait_for(before + 1, path=GONE_HOOK)

    async with bridge.admin.post(
        f"/api/deliveries/{sent.id}/retry", headers={"X-Requested-With": "curl"}
    ) as response:
        assert response.status == 404
        assert (await response.json())["error"] == f"delivery {sent.id} is not a dead letter"


# -- access ----------------------------------------------------------------------------


async def test_with_a_token_every_page_and_action_needs_it(start: Start) -> None:
    bridge = await start(f'token = "{TOKEN}"')
    failed, _ = await two_events(bridge)
    dead = by_destination(await bridge.store.list_deliveries(limit=100), failed)["old-webhook"]

    requests = [
        ("GET", "/"),
        ("GET", "/?build=68"),
        ("GET", "/api/events"),
        ("GET", "/api/deliveries"),
        ("GET", "/api/dead"),
        ("GET", "/api/destinations"),
        ("GET", "/api/activity"),
        ("POST", f"/api/deliveries/{dead.id}/retry"),
        ("POST", f"/deliveries/{dead.id}/retry"),
        ("POST", "/logout"),
    ]
    for credentials in ({}, {"Authorization": "Bearer wrong-token-0123456789"}):
        for method, path in requests:
            headers = {"X-Requested-With": "test", **credentials}
            async with bridge.admin.request(method, path, headers=headers) as response:
                assert response.status == 401, (method, path, credentials)
                assert response.headers["WWW-Authenticate"].startswith("Bearer")
                text = await response.text()
                assert "andy-corp" not in text and "old-webhook" not in text
                if path.startswith("/api/"):
                    assert (await response.json())["error"] == "a valid admin token is needed"
                else:
                    assert 'name="token" type="password"' in text  # the login form
                    assert "csrf" not in text

    rows = await bridge.store.list_deliveries(state="dead", limit=100)
    assert dead.id in [row.id for row in rows]  # nothing was retried

    auth = {"Authorization": f"Bearer {TOKEN}"}
    assert "old-webhook" in await bridge.page(headers=auth)
    assert len((await bridge.api("/api/events", headers=auth))["events"]) == 2
    async with bridge.admin.post(
        f"/api/deliveries/{dead.id}/retry", headers={**auth, "X-Requested-With": "test"}
    ) as response:
        assert response.status == 200
    # The login page and its stylesheet are the only things open to anyone.
    assert 'name="token"' in await bridge.page("/login")
    async with bridge.admin.get("/style.css") as response:
        assert response.status == 200
        assert response.content_type == "text/css"


async def test_login_form_gives_a_session_cookie_until_sign_out(start: Start) -> None:
    bridge = await start(f'token = "{TOKEN}"')
    async with bridge.admin.post(
        "/login", data={"token": "not-the-token-at-all"}, allow_redirects=False
    ) as response:
        assert response.status == 401
        assert "That is not the admin token." in await response.text()
        assert SESSION_COOKIE not in response.cookies

    async with bridge.admin.post(
        "/login", data={"token": TOKEN}, allow_redirects=False
    ) as response:
        assert response.status == 303
        assert response.headers["Location"] == "./"
        cookie = response.cookies[SESSION_COOKIE]
    assert cookie["httponly"] is True
    assert cookie["samesite"] == "Strict"
    assert TOKEN not in cookie.value
    session = {"Cookie": f"{SESSION_COOKIE}={cookie.value}"}

    html = await bridge.page(headers=session)
    assert "sign out" in html
    assert (await bridge.api("/api/events", headers=session)) == {"events": []}
    csrf = re.search(r'action="\./logout" class="inline">\s*<input [^>]*value="([^"]+)"', html)
    assert csrf is not None

    async with bridge.admin.post(
        "/logout", data={"csrf": csrf.group(1)}, headers=session, allow_redirects=False
    ) as response:
        assert response.status == 303
        assert response.cookies[SESSION_COOKIE].value == ""
    async with bridge.admin.get("/", headers=session) as response:
        assert response.status == 401  # the old cookie is worth nothing now
    async with bridge.admin.get(
        "/", headers={"Cookie": f"{SESSION_COOKIE}=forged-session-value"}
    ) as response:
        assert response.status == 401


async def test_off_loopback_the_admin_app_needs_the_token(
    aiohttp_client: AiohttpClient, tmp_path: Path, fake_chat: FakeChat
) -> None:
    """Configured for every interface: served here on loopback, it must still ask."""
    toml = bridge_toml(fake_chat, f'enabled = false\nhost = "0.0.0.0"\ntoken = "{TOKEN}"')
    config = make_config(tmp_path, toml)
    assert not is_loopback(config.admin.host)
    bridge = await aiohttp_client(create_app(config))
    assert bridge.app[RUNTIME].admin is None  # disabled: no listener of its own
    admin = await aiohttp_client(
        create_admin_app(config, bridge.app[RUNTIME].store, bridge.app[RUNTIME].dispatcher)
    )
    for path in ("/", "/api/events"):
        async with admin.get(path) as response:
            assert response.status == 401
        async with admin.get(path, headers={"Authorization": f"Bearer {TOKEN}"}) as response:
            assert response.status == 200


@pytest.mark.parametrize(
    ("admin", "problem"),
    [
        ('host = "0.0.0.0"', 'admin.token: required when admin.host ("0.0.0.0") is not a loopback'),
        ('host = "192.0.2.7"', "admin.token: required when admin.host"),
        ('host = "bridge.example.com"', "admin.token: required when admin.host"),
        ('host = "::"', "admin.token: required when admin.host"),
        ('token = "short"', "admin.token: must be at least 16 characters"),
        ('host = "0.0.0.0"\ntoken = ""', "admin.token: must be at least 16 characters"),
        ("port = 8080", "admin.port: 8080 is already the webhook port (server.port)"),
        ("colour = 'blue'", "admin.colour: unknown key"),
    ],
)
def test_config_refuses_an_unsafe_admin_section(tmp_path: Path, admin: str, problem: str) -> None:
    toml = f"""
        [admin]
        {admin}

        [[sources]]
        name = "docs"
        secret = "{SECRET}"
        factories = ["*"]
        """
    with pytest.raises(ConfigError) as raised:
        make_config(tmp_path, toml)
    assert any(p.startswith(problem) for p in raised.value.problems), raised.value.problems


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.8.9.10", True),
        ("localhost", True),
        ("::1", True),
        ("[::1]", True),
        ("0.0.0.0", False),
        ("", False),
        ("::", False),
        ("10.0.0.1", False),
        ("localhost.example.com", False),
    ],
)
def test_loopback_addresses(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_the_admin_token_is_redacted_like_every_secret(tmp_path: Path) -> None:
    toml = f"""
        [admin]
        host = "0.0.0.0"
        token = "{TOKEN}"

        [[sources]]
        name = "docs"
        secret = "{SECRET}"
        factories = ["*"]
        """
    config = make_config(tmp_path, toml)
    assert TOKEN in config.secrets()
    assert TOKEN not in repr(config)


async def test_open_listener_answers_only_to_loopback_host_names(start: Start) -> None:
    """Without a token, a site that points its own DNS name at 127.0.0.1 reads nothing."""
    bridge = await start()
    async with bridge.admin.get("/", headers={"Host": "attacker.example:8081"}) as response:
        assert response.status == 421
        assert "old-webhook" not in await response.text()
    async with bridge.admin.get("/api/events", headers={"Host": "attacker.example"}) as response:
        assert response.status == 421
    port = bridge.admin_url.port
    for host in (f"localhost:{port}", f"127.0.0.1:{port}", f"[::1]:{port}"):
        assert "old-webhook" in await bridge.page(headers={"Host": host})


async def test_pages_forbid_framing_scripts_and_caching(start: Start) -> None:
    bridge = await start()
    for path in ("/", "/api/events", "/no-such-page"):
        async with bridge.admin.get(path) as response:
            assert response.headers["X-Frame-Options"] == "DENY"
            policy = response.headers["Content-Security-Policy"]
            assert "frame-ancestors 'none'" in policy
            assert "script-src" not in policy and "default-src 'none'" in policy
            assert response.headers["Cache-Control"] == "no-store"
    html = await bridge.page()
    assert "<script" not in html
    assert '<meta name="viewport" content="width=device-width, initial-scale=1">' in html
    assert '<meta http-equiv="refresh"' not in html
    refreshing = await bridge.page("/?refresh=30")
    assert '<meta http-equiv="refresh" content="30;url=?refresh=30">' in refreshing


# -- the listener ---------------------------------------------------------------------


async def test_a_taken_admin_port_leaves_the_webhook_listener_serving(
    aiohttp_client: AiohttpClient, tmp_path: Path, fake_chat: FakeChat
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = make_config(
            tmp_path, bridge_toml(fake_chat, "").replace("port = 0", f"port = {port}")
        )
        bridge = await aiohttp_client(create_app(config))
        assert bridge.app[RUNTIME].admin.url is None
        async with bridge.get("/healthz") as response:
            assert response.status == 200
        body = fixture_body(PASSED)
        async with bridge.post("/webhook", data=body, headers=signed_headers(body)) as response:
            assert response.status == 202


async def test_the_admin_listener_answers_a_malformed_request_as_json(start: Start) -> None:
    """The admin listener is hardened like the webhook's: the parser's refusals are JSON."""
    bridge = await start()
    assert bridge.admin_url.port is not None
    reader, writer = await asyncio.open_connection("127.0.0.1", bridge.admin_url.port)
    try:
        writer.write(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nBad Header\r\n\r\n")
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.split(b" ")[1] == b"400", answer
    assert b"application/json" in head
    error = json.loads(body)["error"]
    assert error and "\n" not in error
