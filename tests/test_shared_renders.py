"""One event to several destinations: a message that cannot differ between them is rendered
once and shared; everything that does differ (the destination's name, who is mentioned, the
fields a chat adds) still reaches each destination as its own.

Real app, signed webhooks in, a fake chat out, a real SQLite outbox.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from bridge.config import Config
from bridge.jobserv import parse_build
from bridge.parsed_events import ParsedEvents
from bridge.render import compile_template
from bridge.server import create_app
from bridge.store import Delivery
from tests.conftest import generic_destination, make_config, quick_settings
from tests.fakes.chat_server import FakeChat
from tests.test_delivery import ClientFactory, build_body, post

NAMING = '{"to": {{ destination }}, "build": {{ build_id }}, "mentions": {{ mentions }}}'
NOT_NAMING = '{"build": {{ build_id }}, "mentions": {{ mentions }}, "status": {{ status }}}'


def mattermost(fake: FakeChat, name: str, channel: str) -> str:
    return f"""
[[destinations]]
name = "{name}"
type = "mattermost"
url = "{fake.url("/" + name)}"
channel = "{channel}"
timeout = "0.5s"
rate_limit = 0
"""


def route(names: list[str], mention: list[str] = []) -> str:  # noqa: B006 (never changed)
    return (
        f'\n[[routes]]\nnotify = ["failed", "passed"]\ndestinations = {json.dumps(names)}\n'
        f"mention = {json.dumps(mention)}\n"
    )


def test_a_template_says_whether_it_reads_the_destination() -> None:
    assert compile_template(NAMING, "naming", "json").per_destination
    assert not compile_template(NOT_NAMING, "plain", "json").per_destination
    # A mention of the word elsewhere is not a read of the variable.
    comment = '{# the destination #}{"text": {{ "destination" }}}'
    assert not compile_template(comment, "comment", "json").per_destination


def test_a_shared_message_is_posted_with_each_destinations_own_fields(
    fake_chat: FakeChat, tmp_path: Path
) -> None:
    text = (
        quick_settings() + mattermost(fake_chat, "m1", "one") + mattermost(fake_chat, "m2", "two")
    )
    config: Config = make_config(tmp_path, text)
    event = ParsedEvents().event(Delivery(1, 1, "m1", 0, 0.0, build_body(7)))
    template = config.templates["m1"]
    assert template is config.templates["m2"]
    one, two = (
        event.message(Delivery(n, 1, name, 0, 0.0, build_body(7)), template, settings, None)
        for n, (name, settings) in enumerate(config.destinations.items(), 1)
    )
    assert one.body is two.body  # rendered once
    assert one.posted is not None and two.posted is not None
    assert (one.posted["channel"], two.posted["channel"]) == ("one", "two")


async def test_each_destination_gets_its_own_name_mentions_and_chat_fields(
    aiohttp_client: ClientFactory, fake_chat: FakeChat, tmp_path: Path
) -> None:
    naming, plain = tmp_path / "naming.j2", tmp_path / "plain.j2"
    naming.write_text(NAMING)
    plain.write_text(NOT_NAMING)
    text = quick_settings()
    text += "".join(generic_destination(fake_chat, n) for n in ("g1", "g2"))
    text += "".join(generic_destination(fake_chat, n, f'template = "{naming}"') for n in "ab")
    text += "".join(generic_destination(fake_chat, n, f'template = "{plain}"') for n in "xyz")
    text += mattermost(fake_chat, "m1", "one") + mattermost(fake_chat, "m2", "two")
    text += route(["g1", "g2", "a", "b", "m1", "m2", "x"])
    text += route(["y"], ["@alice"]) + route(["z"], ["@bob", "@carol"])
    client = await aiohttp_client(create_app(make_config(tmp_path, text)))
    builds = [1, 2, 3, 4, 5]
    status = ["FAILED", "PASSED", "FAILED", "PASSED", "FAILED"]
    for build in builds:
        await post(client, build_body(build, status[build - 1]))

    paths = ["g1", "g2", "a", "b", "m1", "m2", "x", "y", "z"]
    await fake_chat.wait_for(len(builds) * len(paths))

    def sent(path: str) -> list[dict[str, Any]]:
        return [r.json for r in fake_chat.requests_to("/" + path)]

    # The default template does not name the destination: the same message to both.
    assert sent("g1") == sent("g2")
    assert [m["build_id"] for m in sent("g1")] == builds
    assert [m["status"] for m in sent("g1")] == status
    # One that does: each its own name, every build in order.
    assert sent("a") == [{"to": "a", "build": b, "mentions": []} for b in builds]
    assert sent("b") == [{"to": "b", "build": b, "mentions": []} for b in builds]
    # The same message, each with the channel its destination sets.
    one, two = sent("m1"), sent("m2")
    assert [m["channel"] for m in one] == ["one"] * 5
    assert [m["channel"] for m in two] == ["two"] * 5
    assert [{**m, "channel": "two"} for m in one] == two
    # One template, different routes: whom each route mentions.
    expected = [
        {"build": b, "mentions": [], "status": s} for b, s in zip(builds, status, strict=True)
    ]
    assert sent("x") == expected
    failed = [1, 3, 5]
    assert [m["mentions"] for m in sent("y") if m["build"] in failed] == [["@alice"]] * 3
    assert [m["mentions"] for m in sent("z") if m["build"] in failed] == [["@bob", "@carol"]] * 3


def test_the_lanes_take_the_build_the_intake_parsed_and_keep_their_own() -> None:
    events = ParsedEvents(size=2)
    body = build_body(7)
    parsed = parse_build(body)
    events.add(body, parsed)
    sending = events.event(Delivery(1, 1, "m1", 0, 0.0, body))
    assert sending.build is parsed  # not parsed again
    # A burst of arrivals does not push out what the lanes are sending now.
    for number in range(8, 20):
        events.add(build_body(number), parse_build(build_body(number)))
    assert events.event(Delivery(2, 1, "m2", 0, 0.0, body)) is sending
    # And an arrival no lane reached before it was dropped is parsed when one does.
    late = events.event(Delivery(3, 2, "m1", 0, 0.0, build_body(8)))
    assert late.build == parse_build(build_body(8))
    assert late.facts["build_id"] == 8


def test_what_is_kept_parsed_is_bounded_by_the_bytes_of_its_bodies_too() -> None:
    """A build may be as large as the intake takes (a 1 MB reason, thousands of runs):
    what the lanes keep parsed is bounded in bytes as well as in count."""
    big = [big_body(n) for n in range(1, 6)]
    events = ParsedEvents(size=256, budget=3 * len(big[0]))
    for body in big:  # arrivals no lane has reached yet
        events.add(body, parse_build(body))
    assert list(events.arrived.items) == big[-3:]
    for body in big:  # the lanes sending them
        events.event(Delivery(1, 1, "m1", 0, 0.0, body))
    assert list(events.entries.items) == big[-3:]
    assert not events.arrived.items and events.arrived.bytes == 0
    # The newest is kept whatever its size.
    huge = big_body(6, 5 * len(big[0]))
    events.event(Delivery(2, 2, "m1", 0, 0.0, huge))
    assert list(events.entries.items) == [huge]


def big_body(number: int, size: int = 200_000) -> bytes:
    build = json.loads(build_body(number))
    build["reason"] = "x" * size
    return json.dumps(build).encode()
