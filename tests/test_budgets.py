"""Size budgets: any build renders to a valid message within its chat's limits.

Random builds (names with Unicode, quotes and markup; up to 300 failed runs; reasons up
to 10 KB over many lines; long trigger names) are rendered with each chat's default
template, as a lane does. Each message is then checked here, against the limits the chats
document, independently of the bridge's own `fits`: the header and the build link are
always there, the failed runs shown are the first ones in order, and "…and N more failed
runs" accounts for every one left out. Then, through the lane and a fake chat, a cut is
logged and counted.
"""

from __future__ import annotations

import json
import logging
import re
import xml.etree.ElementTree as ElementTree
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from bridge.chats import CHAT_TYPES
from bridge.incidents import Incident, root_summary
from bridge.jobserv import Build
from bridge.markup import clean
from bridge.outcome import Sent
from bridge.render import Rendered, build_context, context, default_template
from bridge.store.sqlite import SqliteStore
from bridge.threads import Draft
from tests.fakes.chat_server import FakeChat
from tests.test_chats import (
    CASES,
    DESTINATION,
    MATRIX,
    ChatCase,
    by_type,
    deliver,
    discord_problems,
    prepare,
)

FACTORY = "andy-corp"
# Run links carry this token, so that a run's place in a message is found whatever its name.
TOKEN = "q7Zr4v"
RUN_LINK = re.compile(rf"/run-(\d+)-{TOKEN}/")
MORE = re.compile(r"…and (\d+) more failed runs")
# Characters XML refuses and HTML ignores; they say nothing about the markup.
CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")

# Every chat type with limits of its own: Slack's two, and the rest.
LIMITED_CHATS = ["slack-webhook", "slack-api", *(case.type for case in CASES)]

MARKUP = [*"<>&\"'`*_~|[]()#\\:@!{}/%=;\n\t ", "</a>", "<b>", "&amp;", "](", "@everyone"]
characters = st.one_of(
    st.sampled_from(MARKUP),
    st.characters(exclude_categories=("Cs",)),  # no lone surrogates: they are not UTF-8
    st.sampled_from(["é", "ß", "中", "🚀", "👩‍💻", "e\u0301", "\u200b", "\u202e"]),
)
texts = st.lists(characters, max_size=40).map("".join)


@st.composite
def long_texts(draw: st.DrawFn, most: int) -> str:
    """Text of up to `most` characters, over many lines: a piece repeated."""
    piece = draw(texts)
    lines = draw(st.integers(1, 400))
    text = "\n".join([piece] * lines)
    return text[:most]


@st.composite
def builds(draw: st.DrawFn) -> Build:
    failed = draw(st.integers(0, 300))
    passed = draw(st.integers(0, 20))
    names = draw(st.lists(texts.filter(str.strip), min_size=1, max_size=6))
    hosts = draw(st.lists(st.none() | texts, min_size=1, max_size=3))
    trigger = draw(st.none() | texts | long_texts(2000))
    reason = draw(st.none() | texts | long_texts(10_000))
    build_id = draw(st.integers(1, 10**9))
    return make_build(
        failed, passed, names, hosts, trigger=trigger, reason=reason, build_id=build_id
    )


def make_build(
    failed: int,
    passed: int,
    names: list[str],
    hosts: list[str | None],
    *,
    trigger: str | None = "containers-devel",
    reason: str | None = "bump",
    build_id: int = 68,
) -> Build:
    base = f"https://api.foundries.io/projects/{FACTORY}/lmp/builds/{build_id}"
    web = f"https://ci.foundries.io/projects/{FACTORY}/lmp/builds/{build_id}"
    runs: list[dict[str, Any]] = []
    for index in range(failed):
        slug = f"run-{index}-{TOKEN}"
        runs.append(
            {
                "name": names[index % len(names)],
                "url": f"{base}/runs/{slug}/",
                "status": "FAILED",
                "log_url": f"{base}/runs/{slug}/console.log",
                "web_url": f"{web}/{slug}/",
                "host_tag": hosts[index % len(hosts)],
            }
        )
    for index in range(passed):  # passed runs are interleaved: they never show
        runs.insert(
            min(index * 3, len(runs)),
            {
                "name": f"passed-{index}",
                "url": f"{base}/runs/passed-{index}/",
                "status": "PASSED",
                "log_url": f"{base}/runs/passed-{index}/console.log",
            },
        )
    return Build.model_validate(
        {
            "build_id": build_id,
            "url": base + "/",
            "web_url": web,
            "status": "FAILED" if failed else "PASSED",
            "trigger_name": trigger,
            "reason": reason,
            "runs": runs,
            "created": "2024-05-01T10:00:00+00:00",
            "completed": "2024-05-01T10:42:13+00:00",
        }
    )


def render(chat_type: str, build: Build, most: int | None) -> Rendered:
    """Render as a lane does: the chat's default template, its `fits`, at most `most` runs."""
    chat = CHAT_TYPES[chat_type]
    template = default_template(chat.template_name, chat.body)
    values = context(build, event_id=1, destination=DESTINATION)
    return template.render_within(values, chat.fits, most)


# --- the limits each chat documents ------------------------------------------------------


def utf8_json(message: dict[str, Any]) -> int:
    return len(json.dumps(message, ensure_ascii=False, separators=(",", ":")).encode())


def slack_problems(message: dict[str, Any]) -> list[str]:
    """Slack: 50 blocks; a header's text 150 characters, a section's 3000; text 40,000."""
    problems = []
    blocks = message["blocks"]
    if len(blocks) > 50:
        problems.append("blocks")
    for block in blocks:
        if block["type"] == "header" and len(block["text"]["text"]) > 150:
            problems.append("header")
        if block["type"] == "section" and len(block["text"]["text"]) > 3000:
            problems.append("section")
        for element in block.get("elements", []):
            if len(element.get("text", "")) > 3000:
                problems.append("context")
    if len(message["text"]) > 40_000:
        problems.append("text")
    return problems


def teams_problems(message: dict[str, Any]) -> list[str]:
    """Teams: 28 KB for the message, card included."""
    return ["size"] if utf8_json(message) > 28 * 1024 else []


def googlechat_problems(message: dict[str, Any]) -> list[str]:
    """Google Chat: 32,000 bytes a message; 100 widgets a card."""
    problems = ["size"] if utf8_json(message) > 32_000 else []
    for item in message["cardsV2"]:
        if sum(len(s["widgets"]) for s in item["card"]["sections"]) > 100:
            problems.append("widgets")
    return problems


def mattermost_problems(message: dict[str, Any]) -> list[str]:
    """Mattermost: 16,383 characters a post (attachment texts held to the same here)."""
    attachment_text = "".join(a.get("text", "") for a in message.get("attachments", []))
    return [
        what
        for what, text in (("text", message.get("text", "")), ("attachments", attachment_text))
        if len(text) > 16_383
    ]


def rocketchat_problems(message: dict[str, Any]) -> list[str]:
    """Rocket.Chat: 5000 characters a message (the default Message_MaxAllowedSize)."""
    attachment_text = "".join(a.get("text", "") for a in message.get("attachments", []))
    return [
        what
        for what, text in (("text", message.get("text", "")), ("attachments", attachment_text))
        if len(text) > 5000
    ]


def matrix_problems(message: dict[str, Any]) -> list[str]:
    """Matrix: an event is at most 65,536 bytes, so its content is less."""
    return ["size"] if utf8_json(message) > 65_536 else []


PROBLEMS: dict[str, Callable[[dict[str, Any]], list[str]]] = {
    "slack-webhook": slack_problems,
    "slack-api": slack_problems,
    "teams": teams_problems,
    "discord": discord_problems,
    "googlechat": googlechat_problems,
    "mattermost": mattermost_problems,
    "rocketchat": rocketchat_problems,
    "matrix": matrix_problems,
}


# --- where each chat shows the header and the build link ----------------------------------


def unmarkdown(text: str) -> str:
    return re.sub(r"\\([^\w\s]|_)", r"\1", text)


def header_of(chat_type: str, message: dict[str, Any]) -> str:
    """The text a reader sees first, as plain text."""
    match chat_type:
        case "slack-webhook" | "slack-api":
            return str(message["blocks"][0]["text"]["text"])
        case "teams":
            return str(message["attachments"][0]["content"]["body"][0]["inlines"][0]["text"])
        case "discord":
            return str(message["embeds"][0]["title"])
        case "googlechat":
            return str(message["cardsV2"][0]["card"]["header"]["title"])
        case "mattermost":
            return str(message["attachments"][0]["fallback"])
        case "rocketchat":
            return unmarkdown(message["text"])
        case "matrix":
            return str(message["body"].split("\n", 1)[0])
    raise AssertionError(chat_type)


def build_links_of(chat_type: str, message: dict[str, Any]) -> list[str]:
    """Where the chat's message links the build (a button, a title's link, ...)."""
    match chat_type:
        case "slack-webhook" | "slack-api":
            return re.findall(
                r"<([^|>]+)\|Open build #", message["blocks"][-1]["elements"][0]["text"]
            )
        case "teams":
            return [a["url"] for a in message["attachments"][0]["content"]["actions"]]
        case "discord":
            return [message["embeds"][0]["url"]]
        case "googlechat":
            widgets = message["cardsV2"][0]["card"]["sections"][-1]["widgets"]
            return [b["onClick"]["openLink"]["url"] for b in widgets[0]["buttonList"]["buttons"]]
        case "mattermost" | "rocketchat":
            return [message["attachments"][0]["title_link"]]
        case "matrix":
            return re.findall(r'<a href="([^"]+)">Build #', message["formatted_body"])
    raise AssertionError(chat_type)


def strings_in(value: Any, holder: Any = None) -> Iterator[tuple[str, Any]]:
    """Every string in a JSON document, with the object that holds it."""
    if isinstance(value, str):
        yield value, holder
    elif isinstance(value, dict):
        for item in value.values():
            yield from strings_in(item, value)
    elif isinstance(value, list):
        for item in value:
            yield from strings_in(item, holder)


def html_fragments(chat_type: str, message: dict[str, Any]) -> list[str]:
    """The texts a chat reads as HTML."""
    if chat_type == "matrix":
        return [message["formatted_body"]]
    if chat_type == "googlechat":
        return [
            text
            for text, holder in strings_in(message["cardsV2"])
            if isinstance(holder, dict) and holder.get("text") == text
        ]
    return []


# --- the property ------------------------------------------------------------------------


def check_message(chat_type: str, build: Build, rendered: Rendered, most: int | None) -> None:
    message = rendered.body
    assert isinstance(message, dict)
    assert CHAT_TYPES[chat_type].fits is not None
    assert CHAT_TYPES[chat_type].fits(message) is None
    assert PROBLEMS[chat_type](message) == []
    # Valid JSON all the way down: what is sent parses back to the same document.
    encoded = json.dumps(message, ensure_ascii=False, separators=(",", ":")).encode()
    assert json.loads(encoded) == message

    build_url = build.web_url
    # Build data arrives cleaned, with a word joiner after what could begin a mention.
    header = header_of(chat_type, message).replace("\u2060", "")
    assert FACTORY in header
    assert f"#{build.build_id}" in header
    assert build.status in header
    trigger = " ".join(clean(build.trigger_name or "").split())
    if trigger:
        assert trigger[:40].rstrip() in header
    assert build_links_of(chat_type, message) == [build_url]

    # The failed runs shown: the first ones, in order, each once.
    text = json.dumps(message, ensure_ascii=False)
    found = [int(i) for i in RUN_LINK.findall(text)]
    shown = list(dict.fromkeys(found))
    total = sum(run.status == "FAILED" for run in build.runs)
    assert shown == list(range(len(shown)))
    if most is not None:
        assert len(shown) <= most
    assert rendered.hidden == total - len(shown)

    # "…and N more failed runs", linking the build, for every run left out.
    mores = [(s, holder) for s, holder in strings_in(message) if MORE.search(s)]
    if len(shown) == total:
        assert mores == []
        assert not rendered.cut
    else:
        assert mores
        for string, holder in mores:
            [count] = MORE.findall(string)
            assert len(shown) + int(count) == total
            [line] = [line for line in string.splitlines() if MORE.search(line)]
            assert build_url in line or build_url in json.dumps(holder, ensure_ascii=False)

    # Markup that chats read as HTML is still well formed: tags closed, entities whole.
    for fragment in html_fragments(chat_type, message):
        ElementTree.fromstring(f"<root>{CONTROL.sub('', fragment)}</root>")


@pytest.mark.parametrize("chat_type", LIMITED_CHATS)
@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(build=builds(), most=st.sampled_from([None, None, 0, 20, 1000]))
@example(
    build=make_build(
        300,
        5,
        ["build-amd64-" + '<&"*_[x](y)`' * 20],
        ["amd64-partner" * 20, None],
        trigger="platform-" + "très-long-trigger-" * 110,
        reason=('a long reason line with <markup> & "quotes" *stars*\n' * 200)[:10_000],
    ),
    most=None,
)
@example(build=make_build(0, 3, ["x"], [None], trigger=None, reason=None), most=20)
def test_any_build_renders_within_the_chats_limits(
    chat_type: str, build: Build, most: int | None
) -> None:
    rendered = render(chat_type, build, most)
    check_message(chat_type, build, rendered, most)


@pytest.mark.parametrize("chat_type", LIMITED_CHATS)
def test_300_failed_runs_show_as_many_as_fit_and_count_the_rest(chat_type: str) -> None:
    names = ["build-" + "x" * 60, "test-<b>&amp;</b>-*bold*"]
    build = make_build(300, 10, names, ["aarch64"], reason="r" * 10_000)
    rendered = render(chat_type, build, None)
    check_message(chat_type, build, rendered, None)
    assert rendered.cut
    # As many as fit: one more would not.
    shown = 300 - rendered.hidden
    assert shown > 0
    chat = CHAT_TYPES[chat_type]
    template = default_template(chat.template_name, chat.body)
    values = context(build, event_id=1, destination=DESTINATION)
    one_more = template.render(
        {**values, "failed_runs": values["failed_runs"][: shown + 1], "more_failed": 299 - shown}
    )
    assert chat.fits is not None
    assert chat.fits(one_more) is not None


# --- through the lane: the bytes a chat receives, and the cut logged and counted -----------


@pytest.mark.parametrize("case", CASES, ids=by_type)
async def test_a_huge_build_reaches_the_chat_within_its_limits(
    case: ChatCase,
    fake_chat: FakeChat,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    build = make_build(300, 0, ["build-" + "y" * 80], ["aarch64"], reason="why\n" * 2500)
    body = build.model_dump_json().encode()
    store = SqliteStore(tmp_path / "outbox.sqlite3")
    await store.open(serving=True)
    try:
        async with aiohttp.ClientSession() as session:
            setup = await prepare(
                case, fake_chat, tmp_path, store, session, body, extra="max_failed_runs = 300"
            )
            with caplog.at_level(logging.INFO, logger="bridge.delivery"):
                assert await deliver(setup, fake_chat, case, case.success) == Sent()
    finally:
        await store.close()
    [request] = fake_chat.requests
    message = request.json
    assert PROBLEMS[case.type](message) == []
    # The bytes on the wire, for the chats that limit bytes.
    wire_limit = {"teams": 28 * 1024, "googlechat": 32_000, "matrix": 65_536}.get(case.type)
    if wire_limit is not None:
        assert len(request.body) <= wire_limit
    shown = len(dict.fromkeys(RUN_LINK.findall(request.text)))
    assert 0 < shown < 300
    assert f"…and {300 - shown} more failed runs" in request.text
    counted = setup.metrics.registry.get_sample_value(
        "jobserv_bridge_truncations_total", {"destination": DESTINATION}
    )
    assert counted == 1
    [logged] = [r.getMessage() for r in caplog.records if "to fit the chat" in r.getMessage()]
    assert f"{300 - shown} failed runs left out" in logged


async def test_a_message_within_limits_is_not_counted_as_cut(
    fake_chat: FakeChat, tmp_path: Path
) -> None:
    build = make_build(30, 0, ["build"], [None])
    store = SqliteStore(tmp_path / "outbox.sqlite3")
    await store.open(serving=True)
    try:
        async with aiohttp.ClientSession() as session:
            setup = await prepare(MATRIX, fake_chat, tmp_path, store, session,
                                  build.model_dump_json().encode())  # fmt: skip
            await deliver(setup, fake_chat, MATRIX, MATRIX.success)
    finally:
        await store.close()
    # The destination's maximum (20) left 10 out: that is no cut to fit the chat.
    assert "…and 10 more failed runs" in fake_chat.requests[0].text
    counted = setup.metrics.registry.get_sample_value(
        "jobserv_bridge_truncations_total", {"destination": DESTINATION}
    )
    assert not counted


# --- an incident's root: the first and the latest failed build in one message -------------


@pytest.mark.parametrize("chat_type", ["slack-api", "matrix"])
def test_an_incident_root_of_huge_builds_stays_within_the_chats_limits(chat_type: str) -> None:
    names = ["build-" + "x" * 180 + "<&>*_`", "test-<b>&amp;</b>-*bold*"]
    first = make_build(300, 5, names, ["aarch64" * 20], reason="<&>" * 5_000, build_id=41)
    latest = make_build(300, 5, names, [None], reason="\n".join(["r" * 400] * 50), build_id=43)
    incident = Incident((41, 42, 43))
    draft = Draft(
        latest,
        1,
        root_summary(incident),
        {
            "summary": root_summary(incident),
            "failing": True,
            "fixed_by": None,
            "count": incident.count,
            "failed_builds": list(incident.failed),
            "reposted": False,
            "first": build_context(first),
            "latest": build_context(latest),
        },
    )
    chat = CHAT_TYPES[chat_type]
    template = default_template(chat.template_name, chat.body)

    rendered = template.render_within(draft.context(DESTINATION, build_context(latest)), chat.fits)

    assert chat.fits is not None and chat.fits(rendered.body) is None
    assert rendered.hidden < 300
    assert "Failing since #41 (3 failed builds, latest #43)" in json.dumps(rendered.body)
