"""Digests: which deliveries share a message, and every default template's digest."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bridge.chats import CHAT_TYPES, ChatType
from bridge.chats.limits import slack_fits
from bridge.digest import (
    DIGEST_FIELDS,
    Digester,
    digest_context,
    digest_entry,
    fit_members,
    next_unit,
    units,
)
from bridge.jobserv import Build, parse_build
from bridge.outcome import Retry, Sent
from bridge.render import Template, context, context_read, default_template
from bridge.store import Delivery
from tests.conftest import FAILED, PASSED, fixture_body

# The environment templates compile in (its filters are the ones templates may use).
ENVIRONMENT = default_template("slack.j2", "json").compiled.environment


def never_alone(_item: object) -> bool:
    return False


# -- which deliveries share a message ----------------------------------------------------


def test_an_empty_lane_has_no_unit() -> None:
    assert next_unit([], 10, never_alone) == 0
    assert units([], 10, never_alone) == []


def test_a_lone_delivery_goes_alone() -> None:
    assert units([7], 10, never_alone) == [[7]]


def test_a_due_run_goes_as_one_unit_up_to_its_maximum() -> None:
    assert units(list(range(7)), 3, never_alone) == [[0, 1, 2], [3, 4, 5], [6]]


def test_a_maximum_of_one_sends_every_delivery_alone() -> None:
    assert units([1, 2, 3], 1, never_alone) == [[1], [2], [3]]
    assert units([1, 2, 3], 0, never_alone) == [[1], [2], [3]]


def test_a_delivery_that_must_go_alone_cuts_the_run_and_keeps_its_place() -> None:
    def odd(number: int) -> bool:
        return number % 2 == 1

    assert units([0, 2, 1, 4, 6, 8, 3, 5], 3, odd) == [[0, 2], [1], [4, 6, 8], [3], [5]]


@given(
    st.lists(st.tuples(st.integers(), st.booleans()), max_size=60),
    st.integers(min_value=0, max_value=40),
)
def test_units_keep_the_lane_order_and_lose_nothing(due: list[tuple[int, bool]], most: int) -> None:
    found = units(due, most, lambda item: item[1])
    assert [item for unit in found for item in unit] == due
    for unit in found:
        assert 1 <= len(unit) <= max(most, 1)
        if len(unit) > 1:
            assert not any(alone for _, alone in unit)


# -- which templates handle digests ------------------------------------------------------


@pytest.mark.parametrize("chat", sorted(CHAT_TYPES))
def test_every_default_template_handles_digests(chat: str) -> None:
    kind = CHAT_TYPES[chat]
    assert "digest" in context_read(ENVIRONMENT, default_source(kind).decode())


@pytest.mark.parametrize(
    ("source", "handles"),
    [
        ('{"text": {{ factory ~ " #" ~ build_id }}}', False),
        ("{% if digest is defined %}{{ digest | length }}{% else %}{{ x }}{% endif %}", True),
        ("{% for item in digest %}{{ item.build_id }}{% endfor %}", True),
        # A template's own variable of that name is not the context's digest.
        ("{% set digest = [1] %}{{ digest }}", False),
        ("{% if digest %}", False),  # does not compile: it is refused at load anyway
        ("{{ digest | no_such_filter }}", False),
    ],
)
def test_a_template_handles_digests_when_it_names_digest(source: str, handles: bool) -> None:
    assert ("digest" in context_read(ENVIRONMENT, source)) is handles


# -- the context of a digest -------------------------------------------------------------


def build_variant(number: int, trigger: str, status: str = "FAILED") -> Build:
    data: dict[str, Any] = json.loads(fixture_body(FAILED if status == "FAILED" else PASSED))
    data.update(
        build_id=number,
        trigger_name=trigger,
        status=status,
        url=f"https://api.foundries.io/projects/andy-corp/lmp/builds/{number}/",
        web_url=f"https://ci.foundries.io/projects/andy-corp/lmp/builds/{number}",
    )
    return parse_build(json.dumps(data).encode())


def entries(
    count: int, *, start: int = 1, mentions: tuple[str, ...] = (), trigger: str = "trigger"
) -> list[dict[str, Any]]:
    found = []
    for number in range(start, start + count):
        status = "PASSED" if number % 5 == 0 else "FAILED"
        build = build_variant(number, f"{trigger}-{number}", status)
        found.append(
            digest_entry(
                context(build, event_id=number, destination="ci", mentions=mentions[:number])
            )
        )
    return found


def test_a_digest_context_counts_its_builds_and_joins_their_mentions() -> None:
    found = digest_context(
        [
            {**entry, "mentions": mentions}
            for entry, mentions in zip(
                entries(3, start=4), [["@a", "@b"], [], ["@b", "@c"]], strict=True
            )
        ],
        destination="ci",
        more=7,
    )
    assert [item["build_id"] for item in found["digest"]] == [4, 5, 6]
    assert set(found["digest"][0]) == set(DIGEST_FIELDS)
    assert found["digest_counts"] == {"builds": 3, "failed": 2, "passed": 1, "other": 0}
    assert found["mentions"] == ["@a", "@b", "@c"]
    assert (found["more_builds"], found["destination"]) == (7, "ci")


# -- every default template renders a digest ---------------------------------------------


def default_source(chat: ChatType) -> bytes:
    from importlib import resources

    return resources.files("bridge.templates").joinpath(chat.template_name).read_bytes()


def default_of(chat: ChatType) -> Template:
    return default_template(chat.template_name, chat.body)


def rendered_text(body: Any) -> str:
    return body if isinstance(body, str) else json.dumps(body, ensure_ascii=False)


@pytest.mark.parametrize("chat", sorted(CHAT_TYPES))
def test_a_digest_lists_every_build_with_its_link(chat: str) -> None:
    kind = CHAT_TYPES[chat]
    listed = entries(12, mentions=("@ops",))
    body = default_of(kind).render(digest_context(listed, destination="ci", more=3))
    assert kind.fits is None or kind.fits(body) is None
    text = rendered_text(body)
    for entry in listed:
        assert entry["links"]["build"] in text
        assert entry["trigger"] in text
    assert "12 builds: 10 failed, 2 passed" in text
    assert "3 more" in text
    assert "@ops" in text


@pytest.mark.parametrize("chat", sorted(CHAT_TYPES))
def test_a_digest_with_nothing_more_does_not_say_more(chat: str) -> None:
    body = default_of(CHAT_TYPES[chat]).render(digest_context(entries(2), destination="ci"))
    text = rendered_text(body)
    assert "more builds" not in text
    assert "more follow" not in text


def test_a_teams_digest_pings_whom_its_builds_mention() -> None:
    listed = entries(3, mentions=("Alice <alice@example.com>", "CI team"))
    body = default_of(CHAT_TYPES["teams"]).render(digest_context(listed, destination="ci"))
    card = body["attachments"][0]["content"]
    assert card["msteams"]["entities"] == [
        {
            "type": "mention",
            "text": "<at>Alice</at>",
            "mentioned": {"id": "alice@example.com", "name": "Alice"},
        }
    ]
    assert {"type": "TextBlock", "wrap": True, "text": "<at>Alice</at> CI team"} in card["body"]


def test_a_slack_digest_escapes_what_builds_carry() -> None:
    hostile = [{**entry, "trigger": "<!here> *bold*", "note": "<@U1> & co"} for entry in entries(2)]
    body = default_of(CHAT_TYPES["slack-webhook"]).render(digest_context(hostile, destination="ci"))
    text = rendered_text(body)
    assert "<!here>" not in text
    assert "<@U1>" not in text
    assert "*bold*" in text  # in a verbatim section, shown as it is
    assert "&amp; co" in text


def test_a_slack_digest_of_many_builds_spreads_them_over_sections() -> None:
    listed = entries(40)
    body = default_of(CHAT_TYPES["slack-webhook"]).render(digest_context(listed, destination="ci"))
    assert isinstance(body, dict)
    assert slack_fits(body) is None
    sections = [block for block in body["blocks"] if block["type"] == "section"]
    assert len(sections) > 1
    lines = "\n".join(section["text"]["text"] for section in sections).splitlines()
    assert [line.count("#") for line in lines] == [1] * 40


# -- as many builds as fit ---------------------------------------------------------------


def test_a_digest_over_the_chats_limits_carries_the_most_builds_that_fit() -> None:
    listed = entries(700, trigger="a-long-trigger-name-" * 5)
    template = default_of(CHAT_TYPES["slack-webhook"])

    def render(count: int) -> Any:
        return template.render(
            digest_context(listed[:count], destination="ci", more=len(listed) - count)
        )

    assert slack_fits(render(700)) is not None
    count, body = fit_members(render, len(listed), slack_fits)
    assert 2 <= count < 700
    assert slack_fits(body) is None
    assert slack_fits(render(count + 1)) is not None
    text = rendered_text(body)
    assert listed[count - 1]["links"]["build"] in text
    assert listed[count]["links"]["build"] not in text
    assert f"…and {700 - count} more builds" in text


def test_a_digest_that_fits_is_rendered_once_whole() -> None:
    calls: list[int] = []

    def render(count: int) -> Any:
        calls.append(count)
        return {"text": "x" * count}

    assert fit_members(render, 5, slack_fits) == (5, {"text": "xxxxx"})
    assert fit_members(render, 5, None) == (5, {"text": "xxxxx"})
    assert calls == [5, 5]


def test_when_not_two_builds_fit_the_head_goes_alone() -> None:
    def render(count: int) -> Any:
        return {"text": "x" * 40_000 * count}

    assert fit_members(render, 9, slack_fits) == (1, "")
    assert fit_members(render, 1, slack_fits) == (1, "")


def test_the_docs_example_renders_a_digest_and_a_build() -> None:
    from bridge.render import compile_template

    page = (Path(__file__).parent.parent / "docs" / "templates.md").read_text()
    section = page.split("## Digests\n", 1)[1].split("\n## ", 1)[0]
    source = section.split("```jinja\n", 1)[1].split("```", 1)[0]
    template = compile_template(source, "example.j2", "json")
    assert template.digests
    listed = entries(3)
    body = template.render(digest_context(listed, destination="ci"))
    assert body == {"text": "\n".join(entry["links"]["build"] for entry in listed)}
    build = build_variant(9, "t")
    assert template.render(context(build, event_id=1, destination="ci")) == {
        "text": f"andy-corp #9 FAILED {build.web_url}"
    }


def test_digest_keys_are_per_destination_with_their_defaults(tmp_path: Path) -> None:
    from bridge.config import ConfigError
    from tests.conftest import jobserv_source, make_config

    def destination(name: str, kind: str, extra: str = "") -> str:
        return f"""
[[destinations]]
name = "{name}"
type = "{kind}"
url = "http://127.0.0.1:9/{name}"
{extra}
"""

    config = make_config(
        tmp_path,
        jobserv_source()
        + destination("slack", "slack-webhook")
        + destination("hook", "generic")
        + destination("quiet", "slack-webhook", "digest = false\ndigest_max = 5"),
    )
    found = {
        name: (settings.digest, settings.digest_max)
        for name, settings in config.destinations.items()
    }
    assert found == {"slack": (True, 30), "hook": (False, 30), "quiet": (False, 5)}
    with pytest.raises(ConfigError) as caught:
        make_config(tmp_path, jobserv_source() + destination("x", "teams", "digest_max = 0"))
    assert any("digest_max" in problem for problem in caught.value.problems)


def test_check_config_rehearses_a_digest_with_templates_that_read_it(tmp_path: Path) -> None:
    from bridge.rehearsal import template_problems
    from tests.conftest import jobserv_source, make_config

    (tmp_path / "broken.j2").write_text(
        '{% if digest is defined %}{"text": {{ digest_count }}}'
        '{% else %}{"text": {{ factory }}}{% endif %}'
    )
    (tmp_path / "single.j2").write_text('{"text": {{ factory ~ " #" ~ build_id }}}')
    config = make_config(
        tmp_path,
        jobserv_source()
        + "".join(
            f"""
[[destinations]]
name = "{name}"
type = "slack-webhook"
url = "http://127.0.0.1:9/{name}"
{template}
"""
            for name, template in [
                ("default", ""),
                ("broken", 'template = "broken.j2"'),
                ("single", 'template = "single.j2"'),
            ]
        ),
    )
    [problem] = template_problems(config)
    assert problem.startswith("destinations[1].template: ")
    assert "rendering a digest" in problem
    assert "digest_count" in problem


# -- a lane's digests --------------------------------------------------------------------


def digester(tmp_path: Path, extra: str = "", template: str = "") -> Digester:
    from bridge.parsed_events import ParsedEvents
    from tests.conftest import jobserv_source, make_config

    if template:
        (tmp_path / "own.j2").write_text(template)
    config = make_config(
        tmp_path,
        jobserv_source()
        + f"""
[[destinations]]
name = "ci"
type = "slack-webhook"
url = "http://127.0.0.1:9/ci"
{'template = "own.j2"' if template else ""}
{extra}
""",
    )
    settings = config.destinations["ci"]
    return Digester(settings, config.templates["ci"], ParsedEvents().get)


def due(*bodies: bytes) -> list[Delivery]:
    return [
        Delivery(number, number, "ci", 0, 0.0, body, event_key=f"event-{number}")
        for number, body in enumerate(bodies, start=1)
    ]


def failures(count: int) -> list[bytes]:
    return [
        json.dumps(build_variant(n, f"t-{n}").model_dump(mode="json")).encode()
        for n in range(1, count + 1)
    ]


def test_a_lane_digests_its_due_run_up_to_digest_max(tmp_path: Path) -> None:
    found = digester(tmp_path, "digest_max = 3").take(due(*failures(5)), lambda _d: False)
    assert found is not None
    assert [d.id for d in found.members] == [1, 2, 3]
    text = rendered_text(found.rendered.body)
    assert "3 builds: 3 failed" in text
    assert "…and 2 more builds follow" in text
    # The same members make the same key: a resend of the digest is the same message.
    again = digester(tmp_path, "digest_max = 3").take(due(*failures(4)), lambda _d: False)
    assert again is not None and again.key == found.key


def test_no_digest_for_a_lone_delivery_or_when_off(tmp_path: Path) -> None:
    assert digester(tmp_path).take(due(*failures(1)), lambda _d: False) is None
    off = digester(tmp_path, "digest = false")
    assert off.most == 1
    assert off.take(due(*failures(3)), lambda _d: False) is None
    own = digester(tmp_path, template='{"text": {{ factory }}}')
    assert own.most == 1


def test_deliveries_that_must_go_alone_are_left_out_of_a_digest(tmp_path: Path) -> None:
    bodies = failures(4)
    bodies[2] = b'{"not": "a build"}'
    found = digester(tmp_path).take(due(*bodies), lambda _d: False)
    assert found is not None and [d.id for d in found.members] == [1, 2]
    unrecorded = digester(tmp_path).take(due(*failures(4)), lambda d: d.id == 2)
    assert unrecorded is None  # 1 is followed by one that goes alone: 1 goes alone too


def test_a_template_whose_digest_fails_sends_builds_one_by_one(tmp_path: Path) -> None:
    broken = '{% if digest is defined %}{{ nope }}{% else %}{"text": {{ factory }}}{% endif %}'
    assert digester(tmp_path, template=broken).take(due(*failures(3)), lambda _d: False) is None


def test_a_digest_retried_without_a_time_is_due_again_all_at_once(tmp_path: Path) -> None:
    found = digester(tmp_path).take(due(*failures(3)), lambda _d: False)
    assert found is not None
    outcomes = found.outcomes(Retry("http 503", code="http_503"), 1.0, 60.0)
    waits = {outcome.after for _, outcome, _ in outcomes if isinstance(outcome, Retry)}
    assert len(outcomes) == 3 and len(waits) == 1 and None not in waits
    asked = found.outcomes(Retry("429", 7.0), 1.0, 60.0)
    assert {outcome.after for _, outcome, _ in asked if isinstance(outcome, Retry)} == {7.0}
    assert [d.id for d, _, attempted in found.outcomes(Sent(), 1, 2) if attempted] == [1, 2, 3]
