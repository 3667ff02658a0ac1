"""What a build carries reaches a chat clean: no terminal escapes, control or bidi characters.

Signed webhooks go to the real app, which posts to every chat type on a local fake chat and
prints to the console; a user's own template sees the same clean data.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Literal

import pytest
from aiohttp.test_utils import TestClient
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from bridge.failed_tests import FailedTest, RunTests
from bridge.jobserv import parse_build
from bridge.markup import clean, clean_data, plain_json
from bridge.render import build_context, context, default_template
from bridge.server import RUNTIME, create_app
from bridge.store import Store
from tests.conftest import make_config, signed_headers
from tests.fakes.chat_server import FakeChat
from tests.test_mentions import (
    answer_as_every_chat,
    every_chat_config,
    messages_for,
)
from tests.test_policy import build_body, settings

ClientFactory = Callable[[Any], Awaitable[TestClient[Any, Any]]]

# A terminal would colour, retitle, link (OSC 8), clear or beep on these; bidi controls
# would show text in another order than it is written.
RED = "\x1b[31mred\x1b[0m"
LINK = "\x1b]8;;https://evil.example/\x1b\\click\x1b]8;;\x1b\\"
TITLE = "\x1b]0;owned\x07"
C1 = "\x9b2J\x85\x9d0;t\x9c"
BIDI = "\u202eabc\u202c \u2066def\u2069 \u202a\u202b\u202d"
DIRT = f"{RED} {LINK} {TITLE} nul\x00 bel\x07 del\x7f vt\x0b {C1} {BIDI}"
# What no message may hold: C0 controls but the newline, DEL, C1 controls, bidi controls.
FORBIDDEN = re.compile(r"[\x00-\x09\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")
# What escape sequences leave behind when only their ESC is taken out.
LEFTOVERS = ("[31m", "[0m", "]8;;", "evil.example", "]0;owned")


def dirty_build() -> bytes:
    data = json.loads(build_body(68, trigger=f"devel {DIRT}", reason=f"first {DIRT}\nsecond"))
    data["annotation"] = {f"key {DIRT}": [f"value {DIRT}"]}
    for run in data["runs"]:
        run["name"] = f"{run['name']} {DIRT}"
        run["host_tag"] = DIRT
    return json.dumps(data).encode()


def strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for k, v in value.items() for s in (str(k), *strings(v))]
    if isinstance(value, list):
        return [s for item in value for s in strings(item)]
    return []


def assert_clean(text: str) -> None:
    assert FORBIDDEN.findall(text) == [], text
    for leftover in LEFTOVERS:
        assert leftover not in text


async def test_every_chat_gets_build_data_without_escapes_controls_or_bidi(
    aiohttp_client: ClientFactory, fake_chat: FakeChat, tmp_path: Path
) -> None:
    answer_as_every_chat(fake_chat)
    client = await aiohttp_client(create_app(every_chat_config(tmp_path, fake_chat)))

    sent = await messages_for(client, fake_chat, dirty_build())

    assert len(sent) == 8
    for chat, message in sent.items():
        for text in strings(message):
            assert_clean(text)
        # What the escapes coloured or linked is still there, as text.
        assert "red click" in json.dumps(message, ensure_ascii=False), chat
    # A one-line field holds no line break: a run name cannot start a quote or a list.
    [armhf] = [r for r in sent["generic"]["failed_runs"] if r["name"].startswith("build-armhf")]
    assert "\n" not in armhf["name"]
    assert armhf["name"].startswith("build-armhf red click  nul bel del vt ")


async def wait_sent(store: Store, destination: str, timeout: float = 10.0) -> None:  # noqa: ASYNC109
    deadline = time.monotonic() + timeout
    while not await store.list_deliveries(state="sent", destination=destination):
        assert time.monotonic() < deadline, f"nothing sent to {destination}"
        await asyncio.sleep(0.02)


USER_TEMPLATE = """\
trigger={{ build.trigger_name }}
run={{ build.runs[1].name }}
annotation={{ build.annotation | tojson }}
reason_full={{ reason_full }}
reason={{ build.reason }}
"""


async def test_the_console_and_a_users_template_print_clean_build_data(
    aiohttp_client: ClientFactory,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    template = tmp_path / "own.j2"
    template.write_text(USER_TEMPLATE)
    text = settings()
    for name, extra in (("console", ""), ("own", f'template = "{template}"')):
        text += f'\n[[destinations]]\nname = "{name}"\ntype = "console"\n{extra}\n'
    text += '\n[[routes]]\nnotify = ["failed"]\ndestinations = ["console", "own"]\n'
    client = await aiohttp_client(create_app(make_config(tmp_path, text)))

    body = dirty_build()
    response = await client.post("/webhook", data=body, headers=signed_headers(body))
    assert response.status == 202, await response.text()
    await wait_sent(client.app[RUNTIME].store, "console")
    await wait_sent(client.app[RUNTIME].store, "own")

    printed = capsys.readouterr().out
    assert_clean(printed)
    assert "devel red click" in printed
    # The raw build in the context (`build`) is clean too; a multi-line reason keeps its
    # line breaks where a template shows it whole.
    assert "reason_full=first red click" in printed
    assert "reason=first red click" in printed
    assert "\nsecond\n" in printed
    assert "run=build-armhf red click" in printed
    assert 'annotation={"key red click' in printed


def test_failed_tests_names_and_results_are_clean_in_every_template() -> None:
    build = parse_build(build_body(68))
    tests = {
        "build-armhf": RunTests(
            [FailedTest(f"unit {DIRT}", "https://api.example/t/", 2, [f"net {DIRT}", "ok"])]
        )
    }
    facts = build_context(build, tests)
    [run] = facts["failed_runs"]
    assert run["failed_tests"][0]["name"].startswith("unit red click")
    templates: list[tuple[str, Literal["json", "text"]]] = [
        ("slack.j2", "json"),
        ("generic.j2", "json"),
        ("console.j2", "text"),
    ]
    for name, kind in templates:
        body = default_template(name, kind).render(
            context(build, event_id=1, destination="x", facts=facts)
        )
        for text in strings(body):
            assert_clean(text)


def _cleaned_one_by_one(value: Any, multiline: frozenset[str], key: str = "") -> Any:
    """What `clean_data` is: `clean` applied to every key and string, walked naively."""
    if isinstance(value, str):
        return clean(value, key in multiline)
    if isinstance(value, dict):
        return {clean(str(k)): _cleaned_one_by_one(v, multiline, str(k)) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_cleaned_one_by_one(item, multiline, key) for item in value]
    return value


_TEXT = st.text(alphabet=st.sampled_from("ab \n\r\t\x1b[31m\x07\u202e\u0085é"), max_size=6)
_DATA = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), _TEXT),
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(st.one_of(_TEXT, st.sampled_from(["reason", "name"])), inner, max_size=4),
    ),
    max_leaves=20,
)


@hypothesis_settings(max_examples=300, deadline=None)
@given(_DATA)
def test_build_data_is_cleaned_in_every_string_and_key(value: Any) -> None:
    multiline = frozenset({"reason"})
    assert clean_data(value, multiline) == _cleaned_one_by_one(value, multiline)


_FIELD = st.text(alphabet=st.sampled_from('ab /%~\\"\n\t\x1b\x7f\x85\u202eé\u00a0'), max_size=8)


@hypothesis_settings(max_examples=300, deadline=None)
@given(_FIELD, _FIELD, _FIELD, _FIELD, st.booleans())
def test_a_plain_body_makes_the_same_facts_uncleaned(
    trigger: str, reason: str, run_name: str, web_url: str, ascii_only: bool
) -> None:
    """The lanes skip cleaning a build parsed from a `plain_json` body: what they skip
    must change nothing, whatever the strings and however the JSON escapes them."""
    data = json.loads(build_body(7, trigger=trigger, reason=reason, run_names=(run_name,)))
    data["runs"][0]["web_url"] = f"https://ci.example/{web_url}"
    body = json.dumps(data, ensure_ascii=ascii_only).encode()
    build = parse_build(body)
    assert build_context(build, plain=plain_json(body)) == build_context(build)


def test_the_sample_bodies_are_plain_and_dirty_ones_are_not() -> None:
    assert plain_json(build_body(7))
    assert not plain_json(dirty_build())
    assert not plain_json(build_body(7, reason="first\nsecond"))
    raw_del = build_body(7, trigger="del\x7f").replace(b"\\u007f", b"\x7f")
    assert b"\x7f" in raw_del
    assert not plain_json(raw_del)
