"""Templates: the default messages, escaping of what builds carry, custom templates, sandbox."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.chats.limits import slack_fits
from bridge.config import ConfigError
from bridge.jobserv import Build, parse_build
from bridge.markup import clean, quote_url, unmention
from bridge.render import (
    Template,
    TemplateError,
    compile_template,
    context,
    default_template,
)
from bridge.render import _to_json as template_json
from bridge.template_filters import REASON_LIMIT, first_line, shorten
from tests.conftest import FAILED, PASSED, fixture_body, make_config

SLACK = default_template("slack.j2", "json")
GENERIC = default_template("generic.j2", "json")
CONSOLE = default_template("console.j2", "text")
# Slack refuses a message with more blocks than this.
SLACK_MAX_BLOCKS = 50


def fixture_data(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(fixture_body(name))
    return data


def build_from(data: dict[str, Any]) -> Build:
    return parse_build(json.dumps(data).encode())


def render(template: Template, build: Build) -> Any:
    return template.render(context(build, event_id=7, destination="ci-alerts"))


def render_dict(template: Template, build: Build) -> dict[str, Any]:
    body = render(template, build)
    assert isinstance(body, dict)
    return body


def failed_run(name: str, index: int = 0) -> dict[str, Any]:
    base = "https://api.foundries.io/projects/andy-corp/lmp/builds/68/runs"
    return {
        "name": name,
        "url": f"{base}/run-{index}/",
        "status": "FAILED",
        "log_url": f"{base}/run-{index}/console.log",
        "web_url": f"https://ci.foundries.io/projects/andy-corp/lmp/builds/68/run-{index}/",
        "host_tag": "amd64",
    }


def failed_build(
    runs: list[dict[str, Any]] | None = None, reason: str | None = None, trigger: str | None = None
) -> Build:
    data = fixture_data(FAILED)
    if runs is not None:
        data["runs"] = runs
    if reason is not None:
        data["reason"] = reason
    if trigger is not None:
        data["trigger_name"] = trigger
    return build_from(data)


def escaped(text: str) -> str:
    """How Slack mrkdwn wants user text: only &, < and > are control characters; an @
    that could begin a mention is followed by a word joiner."""
    return unmention(text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;"))


def link_label(text: str) -> str:
    """A link's label: escaped, and without the `|` that would end the URL part."""
    return escaped(text).replace("|", "¦")


def mrkdwn_texts(message: dict[str, Any]) -> list[str]:
    texts = []
    for block in message["blocks"]:
        if block["type"] == "section":
            texts.append(block["text"]["text"])
        elif block["type"] == "context":
            texts += [element["text"] for element in block["elements"]]
    return texts


def run_sections(message: dict[str, Any]) -> list[str]:
    """Section texts that announce one failed run (they link its console log)."""
    return [text for text in mrkdwn_texts(message) if "|console log>" in text]


# --- the default templates on the sample webhooks ----------------------------------------


def test_slack_message_for_a_failed_build() -> None:
    data = fixture_data(FAILED)
    message = render_dict(SLACK, build_from(data))
    [failed] = [run for run in data["runs"] if run["status"] == "FAILED"]
    passed_names = [run["name"] for run in data["runs"] if run["status"] == "PASSED"]

    header = message["blocks"][0]
    assert header["type"] == "header"
    assert header["text"]["type"] == "plain_text"
    for part in ("andy-corp", "containers-devel", f"#{data['build_id']}", "FAILED"):
        assert part in header["text"]["text"]

    [section] = run_sections(message)
    assert f"<{failed['web_url']}|{failed['name']}>" in section
    assert f"<{failed['log_url']}|console log>" in section
    everything = json.dumps(message)
    for name in passed_names:
        assert name not in everything

    texts = "\n".join(mrkdwn_texts(message))
    assert f"<{data['web_url']}|" in texts
    assert data["reason"] in texts
    # The plain fallback, shown in notifications: what, how bad, where.
    assert "containers-devel" in message["text"]
    assert "FAILED" in message["text"]
    assert "1 of 3 runs failed" in message["text"]
    assert data["web_url"] in message["text"]


def test_slack_message_for_a_passed_build() -> None:
    data = fixture_data(PASSED)
    message = render_dict(SLACK, build_from(data))
    header = message["blocks"][0]["text"]["text"]
    assert "PASSED" in header
    assert f"#{data['build_id']}" in header
    assert run_sections(message) == []
    assert f"<{data['web_url']}|" in "\n".join(mrkdwn_texts(message))
    assert "PASSED" in message["text"]
    assert data["web_url"] in message["text"]


def test_generic_document_for_a_failed_build() -> None:
    data = fixture_data(FAILED)
    document = render_dict(GENERIC, build_from(data))
    assert document["status"] == "FAILED"
    assert document["build_id"] == data["build_id"]
    assert document["trigger"] == "containers-devel"
    assert document["factory"] == "andy-corp"
    assert document["url"] == data["web_url"]
    assert document["reason"] == data["reason"]
    assert "containers-devel" in document["summary"]
    assert "FAILED" in document["summary"]
    assert f"#{data['build_id']}" in document["summary"]
    assert document["failed_runs"] == [
        {
            "name": run["name"],
            "status": "FAILED",
            "web_url": run["web_url"],
            "log_url": run["log_url"],
        }
        for run in data["runs"]
        if run["status"] == "FAILED"
    ]
    assert document["counts"] == {"runs": 3, "failed": 1, "passed": 2, "other": 0}


def test_generic_document_for_a_passed_build() -> None:
    data = fixture_data(PASSED)
    document = render_dict(GENERIC, build_from(data))
    assert document["status"] == "PASSED"
    assert document["failed_runs"] == []
    assert document["url"] == data["web_url"]
    assert "PASSED" in document["summary"]


def test_console_text_for_a_failed_build() -> None:
    data = fixture_data(FAILED)
    text = render(CONSOLE, build_from(data))
    assert isinstance(text, str)
    first = text.splitlines()[0]
    for part in ("andy-corp", "containers-devel", f"#{data['build_id']}", "FAILED"):
        assert part in first
    assert data["web_url"] in text
    assert data["reason"] in text
    for run in data["runs"]:
        if run["status"] == "FAILED":
            assert run["name"] in text
            assert run["web_url"] in text
            assert run["log_url"] in text
        else:
            assert run["name"] not in text


def test_console_text_for_a_passed_build() -> None:
    data = fixture_data(PASSED)
    text = render(CONSOLE, build_from(data))
    assert isinstance(text, str)
    assert "PASSED" in text.splitlines()[0]
    assert data["web_url"] in text
    assert "FAILED" not in text


# --- what builds carry is escaped --------------------------------------------------------


def test_slack_escapes_run_names_reason_and_trigger() -> None:
    name = "test <b>&</b> run"
    reason = "merge <!channel> & fix a > b"
    trigger = "nightly<&>"
    build = failed_build(runs=[failed_run(name)], reason=reason, trigger=trigger)
    message = render_dict(SLACK, build)

    [section] = run_sections(message)
    assert f"|{escaped(name)}>" in section
    texts = "\n".join(mrkdwn_texts(message))
    assert escaped(reason) in texts
    assert escaped(trigger) in message["text"]
    # None of it raw, where Slack would read it as a link, mention or entity.
    everything = "\n".join([*mrkdwn_texts(message), message["text"]])
    for raw in (name, reason, trigger, "<!channel>", "<b>"):
        assert raw not in everything


def test_slack_escapes_a_build_status_of_any_text() -> None:
    data = fixture_data(FAILED)
    data["status"] = "<!channel> @here"
    message = render_dict(SLACK, build_from(data))
    everything = "\n".join([*mrkdwn_texts(message), message["text"]])
    assert "<!channel>" not in everything
    assert "&lt;!channel&gt; @\u2060here" in everything


def test_a_pipe_in_a_run_name_does_not_break_its_link() -> None:
    build = failed_build(runs=[failed_run("a|b")])
    [section] = run_sections(render_dict(SLACK, build))
    assert "<https://ci.foundries.io/projects/andy-corp/lmp/builds/68/run-0/|a¦b>" in section


def test_json_templates_survive_quotes_backslashes_newlines_and_unicode() -> None:
    name = 'say "hi" \\ back\\slash\n\ttab ☃ 𝄞 \u2028 \x00'
    reason = 'a "quoted" \\ reason ☃ \u00e9'
    build = failed_build(runs=[failed_run(name)], reason=reason)
    document = render_dict(GENERIC, build)
    # Line breaks and tabs in a name become spaces, and the NUL is left out.
    assert document["failed_runs"][0]["name"] == 'say "hi" \\ back\\slash  tab ☃ 𝄞   '
    assert document["reason"] == reason
    [section] = run_sections(render_dict(SLACK, build))
    assert f"|{link_label(clean(name))}>" in section


text_values = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=40)


@settings(max_examples=150, deadline=None)
@given(names=st.lists(text_values, min_size=1, max_size=5), reason=text_values)
def test_json_templates_always_render_valid_json_with_the_text(
    names: list[str], reason: str
) -> None:
    build = failed_build(runs=[failed_run(n, i) for i, n in enumerate(names)], reason=reason)
    shown_reason = shorten(first_line(clean(reason, multiline=True)))
    names = [clean(name) for name in names]

    # render() parses the output: a dict back means the template wrote valid JSON.
    document = render_dict(GENERIC, build)
    assert [run["name"] for run in document["failed_runs"]] == names
    assert document["reason"] == shown_reason

    message = render_dict(SLACK, build)
    sections = run_sections(message)
    assert len(sections) == len(names)
    for index, (name, section) in enumerate(zip(names, sections, strict=True)):
        web_url = f"https://ci.foundries.io/projects/andy-corp/lmp/builds/68/run-{index}/"
        assert f"<{web_url}|{link_label(name)}>" in section
    if shown_reason:
        assert f"\n>{escaped(shown_reason)}" in "\n".join(mrkdwn_texts(message))


# --- size limits -----------------------------------------------------------------------------


def test_a_build_with_300_failed_runs_stays_within_slack_limits() -> None:
    total = 300
    build = failed_build(runs=[failed_run(f"run-{i:03d}", i) for i in range(total)])
    # No maximum of the destination's: only Slack's own limits cut the list.
    rendered = SLACK.render_within(
        context(build, event_id=1, destination="slack"), slack_fits, most=None
    )
    assert rendered.cut
    message = rendered.body
    assert isinstance(message, dict)
    assert len(message["blocks"]) <= SLACK_MAX_BLOCKS
    assert slack_fits(message) is None
    shown = run_sections(message)
    assert 0 < len(shown) < total
    # The runs shown are the first ones, in order.
    assert [re.search(r"\|(run-\d+)>", s).group(1) for s in shown] == [  # type: ignore[union-attr]
        f"run-{i:03d}" for i in range(len(shown))
    ]
    texts = "\n".join(mrkdwn_texts(message))
    assert f"…and {total - len(shown)} more failed runs" in texts
    assert f"{total} of {total} runs failed" in message["text"]


def test_a_build_with_few_failed_runs_has_no_more_line() -> None:
    build = failed_build(runs=[failed_run(f"run-{i}", i) for i in range(3)])
    message = render_dict(SLACK, build)
    assert len(run_sections(message)) == 3
    assert "more failed runs" not in json.dumps(message)


LONG_REASON = (
    "Merge branch 'feature/very-long-name' "
    + "with a great many words " * 20
    + "at the end\nSigned-off-by: Someone <someone@example.com>\n\nmore details here"
)


def test_a_long_multi_line_reason_shows_only_its_first_line_shortened() -> None:
    build = failed_build(reason=LONG_REASON)
    shown_first = LONG_REASON.splitlines()[0][:40]

    document = render_dict(GENERIC, build)
    assert document["reason"].startswith(shown_first)
    assert document["reason"].endswith("…")
    assert len(document["reason"]) <= REASON_LIMIT

    slack = render_dict(SLACK, build)
    summary = slack["blocks"][1]["text"]["text"]
    console = render(CONSOLE, build)
    assert isinstance(console, str)
    # The console's reason line is the first line; the whole reason follows it (issue 11).
    [console_reason] = [line for line in console.splitlines() if line.startswith("  reason:")]
    assert "more details here" in console
    for text in (json.dumps(document), summary, console_reason):
        assert "Signed-off-by" not in text
        assert "more details here" not in text
        assert "at the end" not in text
    assert shown_first in summary
    assert shown_first in console_reason
    # Slack and Matrix also show the whole reason, folded: a block of its own, <details>.
    [whole] = [t for t in mrkdwn_texts(slack) if t.startswith("```")]
    assert "Signed-off-by: Someone &lt;someone@example.com&gt;\n\nmore details here" in whole
    matrix = render_dict(default_template("matrix.j2", "json"), build)
    assert "<details><summary>The whole reason</summary><pre>" in matrix["formatted_body"]
    assert "more details here</pre></details>" in matrix["formatted_body"]


def test_times_are_human_and_runs_say_how_long_they_took() -> None:
    build = failed_build()
    slack = json.dumps(render_dict(SLACK, build))
    matrix = render_dict(default_template("matrix.j2", "json"), build)

    assert "2021-07-27T09:03:20" not in slack + json.dumps(matrix)
    # Slack shows the time in the reader's zone, "2021-07-27 09:03 UTC" where it cannot.
    assert "<!date^1627376600^{date_short_pretty} at {time}|2021-07-27 09:03 UTC>" in slack
    assert "completed 2021-07-27 09:03 UTC" in matrix["body"]
    assert "FAILED on armhf in 45s" in slack
    assert " in 45s" in matrix["body"]


def test_the_annotation_is_shown_when_present() -> None:
    build = failed_build().model_copy(update={"annotation": "flaky <runner> on armhf"})
    slack = mrkdwn_texts(render_dict(SLACK, build))
    matrix = render_dict(default_template("matrix.j2", "json"), build)

    assert ":memo: flaky &lt;runner&gt; on armhf" in slack
    # (a word joiner after "<": build data never starts a mention, see bridge.markup.unmention)
    assert "📝 flaky &lt;\u2060runner&gt; on armhf" in matrix["formatted_body"]
    assert "📝" not in json.dumps(render_dict(SLACK, failed_build()))


def test_a_reason_after_blank_lines_shows_its_first_non_blank_line() -> None:
    build = failed_build(reason="\n\n   bump the kernel   \nsecond line")
    assert render_dict(GENERIC, build)["reason"] == "bump the kernel"


# --- custom templates ----------------------------------------------------------------------


def test_a_custom_template_replaces_the_default(tmp_path: Path) -> None:
    (tmp_path / "templates").mkdir()
    (tmp_path / "templates" / "mine.j2").write_text(
        '{"text": {{ "Build " ~ build_id ~ " of " ~ factory ~ ": " ~ status }},'
        ' "failed": {{ failed_runs | map(attribute="name") | list }}}'
    )
    (tmp_path / "mine.txt.j2").write_text("{{ factory }} #{{ build_id }} is {{ status }}")
    config = make_config(
        tmp_path,
        """
        [[sources]]
        name = "s"
        secret = "x"
        factories = ["*"]
        [[destinations]]
        name = "team"
        type = "generic"
        url = "http://127.0.0.1:9/hook"
        template = "templates/mine.j2"
        [[destinations]]
        name = "screen"
        type = "console"
        template = "mine.txt.j2"
        """,
    )
    build = build_from(fixture_data(FAILED))
    assert render(config.templates["team"], build) == {
        "text": "Build 68 of andy-corp: FAILED",
        "failed": ["build-armhf"],
    }
    assert render(config.templates["screen"], build) == "andy-corp #68 is FAILED"


def test_a_template_syntax_error_is_reported_at_config_load(tmp_path: Path) -> None:
    (tmp_path / "broken.j2").write_text('{\n  "text": {{ factory }},\n  "x": {{ status | }}\n}\n')
    with pytest.raises(ConfigError) as caught:
        make_config(
            tmp_path,
            """
            [[sources]]
            name = "s"
            secret = "x"
            factories = ["*"]
            [[destinations]]
            name = "team"
            type = "generic"
            url = "http://127.0.0.1:9/hook"
            template = "broken.j2"
            """,
        )
    [problem] = caught.value.problems
    assert problem.startswith("destinations[0].template")
    assert "broken.j2" in problem
    assert "line 3" in problem


def test_a_missing_template_file_is_reported_at_config_load(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        make_config(
            tmp_path,
            """
            [[sources]]
            name = "s"
            secret = "x"
            factories = ["*"]
            [[destinations]]
            name = "team"
            type = "console"
            template = "nowhere.j2"
            """,
        )
    [problem] = caught.value.problems
    assert "destinations[0].template" in problem
    assert "nowhere.j2" in problem


@pytest.mark.parametrize("kind", ["json", "text"])
@pytest.mark.parametrize(
    ("source", "named"),
    [
        ('{"text": {{ no_such_thing }}}', "no_such_thing"),
        ('{"text": {{ build.no_such_key }}}', "no_such_key"),
        ('{% if failed %}{"text": {{ typo_here }}}{% else %}{}{% endif %}', "typo_here"),
    ],
)
def test_an_unknown_variable_is_an_error(source: str, named: str, kind: Any) -> None:
    template = compile_template(source, "strict.j2", kind)
    with pytest.raises(TemplateError, match=named) as caught:
        render(template, build_from(fixture_data(FAILED)))
    assert "strict.j2" in str(caught.value)


def test_invalid_json_from_a_template_is_an_error() -> None:
    template = compile_template('{"text": {{ factory }}', "unclosed.j2", "json")
    with pytest.raises(TemplateError, match="invalid JSON"):
        render(template, build_from(fixture_data(FAILED)))


@pytest.mark.parametrize("kind", ["json", "text"])
@pytest.mark.parametrize(
    "source",
    [
        "{{ ''.__class__ }}",
        "{{ ''.__class__.__mro__[1].__subclasses__() }}",
        "{{ factory.__init__.__globals__ }}",
        "{{ runs.append(1) }}",
        "{% set _ = counts.update({'failed': 0}) %}{}",
        "{{ build.runs.pop() }}",
    ],
)
def test_the_sandbox_refuses_unsafe_access(source: str, kind: Any) -> None:
    template = compile_template(source, "evil.j2", kind)
    values = context(build_from(fixture_data(FAILED)), event_id=1, destination="d")
    before = json.dumps(values, sort_keys=True)
    with pytest.raises(TemplateError, match="unsafe"):
        template.render(values)
    assert json.dumps(values, sort_keys=True) == before


# --- what JobServ's own sender sends (found running its notify code against the bridge) ---

GIT_POLLER_REASON = (
    json.dumps(
        {
            "GIT_URL": "https://source.foundries.io/factories/andy-corp/lmp-manifest.git",
            "GIT_REF": "refs/heads/devel",
            "GIT_SHA": "9a8b7c6d",
        },
        indent=2,
    )
    + "\n9a8b7c6 bump the kernel to 6.6.40\n3f2e1d0 fix the wifi firmware\n"
)


def test_a_git_poller_reason_is_headed_by_its_first_commit_not_a_brace() -> None:
    facts = context(failed_build(reason=GIT_POLLER_REASON), event_id=1, destination="d")
    assert facts["reason"] == "9a8b7c6 bump the kernel to 6.6.40"
    assert facts["reason_full"].startswith("{")  # the whole reason is still there


def test_a_reason_of_parameters_alone_names_them() -> None:
    reason = json.dumps({"GIT_REF": "refs/heads/devel", "GIT_SHA": "9a8b7c6d"}, indent=2)
    facts = context(failed_build(reason=reason), event_id=1, destination="d")
    assert facts["reason"] == "GIT_REF=refs/heads/devel, GIT_SHA=9a8b7c6d"


def test_a_reason_that_only_starts_with_a_brace_is_its_first_line() -> None:
    facts = context(failed_build(reason="{not json}\nmore"), event_id=1, destination="d")
    assert facts["reason"] == "{not json}"


def test_run_links_are_quoted_as_a_chat_needs_them() -> None:
    run = failed_run("build-ärm64 ✓")
    run["web_url"] = "https://ci.foundries.io/projects/andy-corp/lmp/builds/68/build-ärm64 ✓"
    run["log_url"] += "?sig=a%2Fb"
    [shown] = context(failed_build(runs=[run]), event_id=1, destination="d")["failed_runs"]
    assert shown["link"] == (
        "https://ci.foundries.io/projects/andy-corp/lmp/builds/68/build-%C3%A4rm64%20%E2%9C%93"
    )
    assert shown["log_url"].endswith("console.log?sig=a%2Fb")  # escapes already made are kept
    assert shown["name"] == "build-ärm64 ✓"


_VALUES = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text()),
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=3), inner, max_size=3)
    ),
    max_leaves=8,
)


@settings(max_examples=300, deadline=None)
@given(_VALUES)
def test_what_a_template_prints_is_json_as_the_encoder_writes_it(value: Any) -> None:
    """Text, numbers and nulls take a shorter way than the encoder: to the same text."""
    assert template_json(value) == json.JSONEncoder(ensure_ascii=False, default=str).encode(value)


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.characters(codec="utf-8"), max_size=12))
def test_a_url_already_quoted_is_left_as_it_is_as_quote_would(path: str) -> None:
    url = f"https://ci.example/{path}"
    assert quote_url(url) == quote(url, safe=":/?#[]@!$&'()*+,;=%~")
