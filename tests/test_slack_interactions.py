"""Slack's button presses: the signature rules and the payload's reading (the endpoint's
tests, through the app, are in tests/test_slack_buttons.py)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from bridge.chats import CHAT_TYPES
from bridge.config import ConfigError
from bridge.incidents import Incident, root_summary
from bridge.jobserv import parse_build
from bridge.render import build_context, default_template
from bridge.slack_interactions import (
    ACKNOWLEDGE,
    MUTE,
    VALUE_LIMIT,
    IncidentRef,
    NotAPress,
    SignatureCheck,
    SlackConfig,
    button_value,
    mute,
    parse_press,
    read_value,
)
from bridge.threads import Draft
from tests.conftest import FAILED, fixture_body, make_config, quick_settings
from tests.slack_presses import SIGNING_SECRET, USER_ID, block_actions, form, signed

REF = IncidentRef("ci-alerts", "andy-corp", "platform-[x]*", 41)


def press_body(action_id: str = ACKNOWLEDGE, value: str | None = None) -> bytes:
    return form(block_actions(action_id, button_value(REF) if value is None else value))


def test_a_request_signed_as_slack_signs_passes() -> None:
    body = press_body()
    assert SignatureCheck(SIGNING_SECRET).refusal(body, signed(body)) is None


@pytest.mark.parametrize(
    "headers, says",
    [
        ({}, "missing"),
        ({"X-Slack-Request-Timestamp": "1"}, "missing"),
        ({"X-Slack-Signature": "v0=" + "0" * 64, "X-Slack-Request-Timestamp": "soon"}, "malformed"),
        ({"X-Slack-Signature": "sha256=abc", "X-Slack-Request-Timestamp": "{now}"}, "malformed"),
        ({"X-Slack-Signature": "v0=" + "0" * 64, "X-Slack-Request-Timestamp": "{now}"}, "match"),
    ],
)
def test_a_missing_malformed_or_wrong_signature_is_refused(
    headers: dict[str, str], says: str
) -> None:
    now = str(int(time.time()))
    headers = {k: v.replace("{now}", now) for k, v in headers.items()}
    refusal = SignatureCheck(SIGNING_SECRET).refusal(press_body(), headers)
    assert refusal is not None and says in refusal


def test_a_signature_with_another_secret_or_over_another_body_is_refused() -> None:
    body = press_body()
    check = SignatureCheck(SIGNING_SECRET)
    assert "match" in (check.refusal(body, signed(body, secret="another-secret")) or "")
    assert "match" in (check.refusal(body + b"&x=1", signed(body)) or "")


@pytest.mark.parametrize("offset", [-301, -3600, 301])
def test_a_timestamp_more_than_five_minutes_away_is_refused(offset: int) -> None:
    body = press_body()
    now = 1_800_000_000.0
    check = SignatureCheck(SIGNING_SECRET, clock=lambda: now)
    refusal = check.refusal(body, signed(body, timestamp=int(now) + offset))
    assert refusal is not None and "5 minutes" in refusal
    # Within the five minutes, the same kind of request passes.
    assert check.refusal(body, signed(body, timestamp=int(now) - 290)) is None


def test_a_replayed_request_is_refused_within_the_five_minutes() -> None:
    body = press_body()
    headers = signed(body)
    check = SignatureCheck(SIGNING_SECRET)
    assert check.refusal(body, headers) is None
    assert "replay" in (check.refusal(body, headers) or "")


def test_signatures_are_forgotten_once_their_timestamps_are_stale() -> None:
    now = [1_800_000_000.0]
    check = SignatureCheck(SIGNING_SECRET, clock=lambda: now[0])
    for second in range(5):
        body = press_body()
        assert check.refusal(body, signed(body, timestamp=int(now[0]) + second)) is None
    now[0] += 3600
    body = press_body()
    assert check.refusal(body, signed(body, timestamp=int(now[0]))) is None
    assert len(check.seen) == 1


def test_a_press_of_acknowledge_is_read_with_its_incident_user_and_message() -> None:
    press = parse_press(press_body())
    assert press is not None
    assert press.action == "acknowledge"
    assert press.incident == REF
    assert (press.user.id, press.user.name) == (USER_ID, "ana")
    assert (press.channel, press.message_ts) == ("C0CHANNEL", "1700000000.000100")
    assert press.user.author == f"ana (Slack {USER_ID})"


def test_a_press_of_mute_is_read_into_a_silence_of_that_trigger_alone_for_a_day() -> None:
    press = parse_press(press_body(MUTE))
    assert press is not None and press.action == "mute" and press.incident == REF
    silence = mute(press, 1000.0)
    assert (silence.starts_at, silence.ends_at) == (1000.0, 1000.0 + 24 * 3600)
    assert silence.destination == "ci-alerts" and silence.author == f"ana (Slack {USER_ID})"
    assert silence.matches("andy-corp", "platform-[x]*", "ci-alerts")
    assert not silence.matches("andy-corp", "platform-x-devel", "ci-alerts")
    assert not silence.matches("andy-corp", "platform-[x]*", "ops")
    assert "#41" in silence.comment


def test_another_apps_button_is_ignored() -> None:
    assert parse_press(press_body("someone-elses-button", "x")) is None


@pytest.mark.parametrize(
    "body",
    [
        b"not a form at all",
        b"\xff\xfe",
        b"text=hello",
        form({"type": "view_submission"}),
        b"payload=%5B1%2C2%5D",  # a JSON list
        b"payload=%7Bnot+json",
        form({"type": "block_actions"}),
        form(block_actions(ACKNOWLEDGE, "not json")),
        form(block_actions(ACKNOWLEDGE, '["d","f","t","41"]')),
        form(block_actions(ACKNOWLEDGE, '["d","f","t",true]')),
        form(block_actions(ACKNOWLEDGE, button_value(REF), user_id="<!channel>")),
    ],
)
def test_what_is_not_a_press_of_ours_is_refused(body: bytes) -> None:
    with pytest.raises(NotAPress):
        parse_press(body)


def test_the_buttons_value_is_the_incident_within_slacks_limit() -> None:
    value = button_value(REF)
    assert read_value(value) == REF
    assert json.loads(value) == ["ci-alerts", "andy-corp", "platform-[x]*", 41]
    huge = IncidentRef("ci-alerts", "andy-corp", "t" * VALUE_LIMIT, 41)
    assert button_value(huge) == ""


def test_the_slack_section_needs_a_signing_secret() -> None:
    config = SlackConfig.model_validate({"signing_secret": "s3cret"})
    assert "s3cret" not in repr(config)
    for bad in ({}, {"signing_secret": "  "}, {"signing_secret": "x", "other": 1}):
        with pytest.raises(ValidationError):
            SlackConfig.model_validate(bad)


# --- the buttons on a failure root (templates/slack.j2) ---------------------------------


def render_root(failing: bool = True, **extra: object) -> dict[str, Any]:
    build = parse_build(fixture_body(FAILED))
    incident = Incident((41, 42)) if failing else Incident((41, 42), 43)
    facts = build_context(build)
    details = {
        "summary": root_summary(incident),
        "failing": failing,
        "fixed_by": incident.fixed_by,
        "count": incident.count,
        "failed_builds": list(incident.failed),
        "reposted": False,
        "first": facts,
        "latest": facts,
        **extra,
    }
    draft = Draft(build, 1, root_summary(incident), details, ("<@U0OWNER>",))
    chat = CHAT_TYPES["slack-api"]
    template = default_template(chat.template_name, chat.body)
    rendered = template.render_within(draft.context("ci-alerts", facts), chat.fits)
    assert chat.fits is not None and chat.fits(rendered.body) is None
    assert isinstance(rendered.body, dict)
    return rendered.body


def buttons(body: dict[str, Any]) -> list[dict[str, Any]]:
    found = [b for b in body["blocks"] if b["type"] == "actions"]
    assert len(found) <= 1
    return found[0]["elements"] if found else []


def contexts(body: dict[str, Any]) -> str:
    return json.dumps([b for b in body["blocks"] if b["type"] == "context"])


def test_a_failing_root_carries_acknowledge_and_mute_whose_press_names_the_incident() -> None:
    body = render_root(buttons=button_value(REF))
    shown = buttons(body)
    assert [(b["action_id"], b["text"]["text"]) for b in shown] == [
        (ACKNOWLEDGE, "Acknowledge"),
        (MUTE, "Mute 24h"),
    ]
    for button in shown:
        press = parse_press(form(block_actions(button["action_id"], button["value"])))
        assert press is not None and press.incident == REF


def test_no_buttons_without_interactivity_or_once_fixed() -> None:
    assert buttons(render_root()) == []
    assert buttons(render_root(buttons="")) == []
    assert buttons(render_root(failing=False, buttons=button_value(REF))) == []


def test_an_acknowledged_root_says_who_and_keeps_only_mute() -> None:
    body = render_root(buttons=button_value(REF), acknowledged_by=USER_ID)
    assert f":white_check_mark: Acknowledged by <@{USER_ID}>" in contexts(body)
    assert [b["action_id"] for b in buttons(body)] == [MUTE]


def test_a_muted_root_says_until_when_and_by_whom_and_keeps_only_acknowledge() -> None:
    muted = {"until": "2026-12-03T16:00:00+00:00", "author": "ana <b> (Slack U1)", "comment": ""}
    body = render_root(buttons=button_value(REF), muted=muted)
    said = contexts(body)
    assert ":mute: Muted until <!date^" in said and "ana &lt;b&gt; (Slack U1)" in said
    assert [b["action_id"] for b in buttons(body)] == [ACKNOWLEDGE]
    both = render_root(buttons=button_value(REF), muted=muted, acknowledged_by=USER_ID)
    assert buttons(both) == []


def test_the_slack_section_is_read_and_its_secret_redacted(tmp_path: Path) -> None:
    config = make_config(tmp_path, quick_settings() + '[slack]\nsigning_secret = "s3cret-sign"\n')
    assert config.slack is not None
    assert config.slack.signing_secret.get_secret_value() == "s3cret-sign"
    assert "s3cret-sign" in config.secrets()
    assert make_config(tmp_path, quick_settings()).slack is None
    for section, problem in (
        ("[slack]\n", "slack.signing_secret: missing"),
        ('[slack]\nsigning_secret = "x"\nmute_for = "1h"\n', "slack.mute_for: unknown key"),
    ):
        with pytest.raises(ConfigError) as refused:
            make_config(tmp_path, quick_settings() + section)
        assert problem in refused.value.problems
