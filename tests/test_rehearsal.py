"""check-config renders every template against sample builds: a template that would fail
only when sending fails at check-config, named with its place."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bridge.chats import CHAT_TYPES
from bridge.config import ConfigError
from bridge.rehearsal import SAMPLES, template_problems
from tests.conftest import make_config
from tests.serve import REPO_ROOT, run_cli

# The keys each chat type needs besides its name and type (no secret is real).
KEYS = {
    "console": "",
    "generic": 'url = "https://hooks.example.com/in"',
    "slack-webhook": 'url = "https://hooks.slack.com/services/T/B/x"',
    "slack-api": 'token = "xoxb-0"\nchannel = "#ci"',
    "discord": 'url = "https://discord.com/api/webhooks/1/x"\nusername = "JobServ"',
    "mattermost": 'url = "https://mm.example.com/hooks/x"\nchannel = "ci"\nusername = "JobServ"',
    "rocketchat": 'url = "https://rc.example.com/hooks/x"',
    "googlechat": 'url = "https://chat.googleapis.com/v1/spaces/x/messages"',
    "teams": 'url = "https://teams.example.com/workflow"',
    "matrix": 'homeserver = "https://matrix.example.com"\nroom_id = "!r:example.com"\ntoken = "t"',
}
SOURCE = """
[[sources]]
name = "jobserv"
secret = "s"
factories = ["*"]
"""


def destination(name: str, kind: str, template: str | None = None) -> str:
    line = f'template = "{template}"\n' if template else ""
    return f'[[destinations]]\nname = "{name}"\ntype = "{kind}"\n{line}{KEYS[kind]}\n'


def test_every_chat_type_is_covered() -> None:
    assert set(KEYS) == set(CHAT_TYPES)


def test_the_shipped_templates_render_every_sample_into_a_valid_message(tmp_path: Path) -> None:
    config = make_config(tmp_path, SOURCE + "".join(destination(k, k) for k in CHAT_TYPES))
    assert template_problems(config) == []


def test_samples_cover_each_transition_and_an_incident_root() -> None:
    kinds = {sample.make("d").get("transition", {}).get("kind") for sample in SAMPLES}
    assert {"first_failure", "still_failing", "fixed", "passed"} <= kinds
    late = [s.make("d")["transition"] for s in SAMPLES if "late" in s.what]
    assert late and late[0]["fixed_by"] is not None
    roots = [s for s in SAMPLES if s.threads_only]
    assert roots and roots[0].make("d")["incident"]["count"] == 2


def test_the_example_config_passes_check_config() -> None:
    result = run_cli(
        "check-config",
        "--config",
        REPO_ROOT / "config.example.toml",
        environment={"JOBSERV_WEBHOOK_SECRET": "from-the-environment"},
    )
    assert result.returncode == 0, result.stderr
    assert "ok (" in result.stdout


def test_check_config_checks_templates_even_without_the_secrets(tmp_path: Path) -> None:
    """An unset variable is a problem, but not one that hides the others."""
    (tmp_path / "t.j2").write_text('{"text": {{ bulid_id }}}')
    config = tmp_path / "config.toml"
    config.write_text(
        SOURCE.replace('"s"', '"${BRIDGE_TEST_UNSET_SECRET}"')
        + destination("d", "slack-webhook", "t.j2")
    )
    result = run_cli("check-config", "--config", config)
    assert result.returncode == 2
    unset, template = result.stderr.splitlines()
    assert "sources[0].secret: environment variable BRIDGE_TEST_UNSET_SECRET is not set" in unset
    assert "destinations[0].template:" in template
    assert "'bulid_id' is undefined" in template


def write_templates(folder: Path) -> None:
    (folder / "misspelled.j2").write_text('{"text": {{ bulid_id }}}')
    (folder / "not-json.j2").write_text('{"text": {{ project }} ,}')
    header = "x" * 200  # Slack takes 150 characters in a header
    block = {"type": "header", "text": {"type": "plain_text", "text": header}}
    (folder / "too-big.j2").write_text(json.dumps({"text": "t", "blocks": [block]}))
    (folder / "no-text.j2").write_text('{"attachment": {{ project }}}')
    (folder / "misspelled.txt.j2").write_text("{{ factory }} {{ trigger_nmae }}\n")


def test_check_config_names_each_template_that_cannot_become_a_message(tmp_path: Path) -> None:
    write_templates(tmp_path)
    config = tmp_path / "config.toml"
    config.write_text(
        SOURCE
        + destination("fine", "slack-webhook")
        + destination("misspelled", "slack-webhook", "misspelled.j2")
        + destination("not-json", "discord", "not-json.j2")
        + destination("too-big", "slack-api", "too-big.j2")
        + destination("no-text", "slack-webhook", "no-text.j2")
        + destination("console", "console", "misspelled.txt.j2")
    )
    result = run_cli("check-config", "--config", config)
    assert result.returncode == 2, result
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    expected = [
        f"destinations[1].template: {tmp_path / 'misspelled.j2'}: rendering a failed build:"
        " 'bulid_id' is undefined",
        f"destinations[2].template: {tmp_path / 'not-json.j2'}: rendering a failed build:"
        " rendered invalid JSON",
        f"destinations[3].template: {tmp_path / 'too-big.j2'}: rendering a failed build:"
        " the message is over the chat's limits: blocks[0] has 200 characters (limit 150)",
        f"destinations[4].template: {tmp_path / 'no-text.j2'}: rendering a failed build:"
        " not a slack-webhook message: needs `text` or `blocks`",
        f"destinations[5].template: {tmp_path / 'misspelled.txt.j2'}: rendering a failed build:"
        " 'trigger_nmae' is undefined",
    ]
    for want in expected:
        assert [line for line in lines if want in line], f"{want!r} not in:\n{result.stderr}"
    assert len(lines) == len(expected)  # each problem once, not once per sample
    assert all(line.startswith(f"{config}: ") for line in lines)
    assert "destinations[0]" not in result.stderr


def test_a_problem_only_some_builds_meet_is_named_with_the_first_of_them(tmp_path: Path) -> None:
    (tmp_path / "fixed.j2").write_text(
        '{"text": {% if transition.kind == "fixed" %}{{ fixer }}{% else %}"ok"{% endif %}}'
    )
    config = make_config(tmp_path, SOURCE + destination("d", "slack-webhook", "fixed.j2"))
    [problem] = template_problems(config)
    assert "rendering a fixed build: 'fixer' is undefined" in problem


@pytest.mark.parametrize("chat", ["slack-api", "matrix"])
def test_a_threaded_chat_renders_an_incident_root_too(chat: str, tmp_path: Path) -> None:
    source = (REPO_ROOT / "templates" / f"{CHAT_TYPES[chat].template_name}").read_text()
    broken = "{% if incident is defined and incident %}{{ incident.missing }}{% endif %}" + source
    (tmp_path / "t.j2").write_text(broken)
    config = make_config(tmp_path, SOURCE + destination("d", chat, "t.j2"))
    [problem] = template_problems(config)
    assert "rendering an incident root:" in problem
    assert "missing" in problem


def test_loading_a_config_does_not_render_samples(tmp_path: Path) -> None:
    """`serve` and reloads stay fast: only check-config rehearses."""
    (tmp_path / "t.j2").write_text('{"text": {{ bulid_id }}}')
    try:
        make_config(tmp_path, SOURCE + destination("d", "slack-webhook", "t.j2"))
    except ConfigError as exc:  # pragma: no cover - the assertion says why
        pytest.fail(f"loading rendered the template: {exc}")
