"""Issue 11: every default template shows what users want at a glance about a failed build:
each failed run's duration, the whole reason (folded when long), the build's annotation."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from bridge.chats import CHAT_TYPES
from bridge.render import context, default_template
from tests.test_mentions import (
    EVERY_PING,
    googlechat_mentions,
    mattermost_mentions,
    rocketchat_mentions,
)
from tests.test_render import failed_build

REASON = "Bump the kernel\n\nSigned-off-by: Someone\nthe second paragraph says why"
ANNOTATION = "flaky runner on armhf"


@pytest.mark.parametrize(
    "chat_type", ["teams", "discord", "googlechat", "mattermost", "rocketchat", "console"]
)
def test_a_failed_build_shows_run_durations_the_whole_reason_and_the_annotation(
    chat_type: str,
) -> None:
    chat = CHAT_TYPES[chat_type]
    build = failed_build(reason=REASON).model_copy(update={"annotation": ANNOTATION})
    template = default_template(chat.template_name, chat.body)
    rendered = template.render_within(context(build, event_id=7, destination="ci"), chat.fits)
    text = rendered.body if isinstance(rendered.body, str) else json.dumps(rendered.body)

    assert not rendered.cut
    # The armhf run of the sample build took 45 seconds.
    assert re.search(r"armhf\W{0,4}in 45s", text)
    assert "the second paragraph says why" in text
    assert ANNOTATION in text


def mentions_in(chat_type: str, message: dict[str, Any]) -> list[str]:
    """Who a chat would notify, read as in tests/test_mentions.py."""
    match chat_type:
        case "teams":
            return re.findall(r"<at>[^<]*</at>", json.dumps(message))
        case "discord":
            allowed = message["allowed_mentions"]
            return [*allowed["parse"], *allowed.get("users", []), *allowed.get("roles", [])]
        case "googlechat":
            return googlechat_mentions(message)
        case "mattermost":
            return mattermost_mentions(message)
        case _:
            return rocketchat_mentions(message)


@pytest.mark.parametrize(
    "chat_type", ["teams", "discord", "googlechat", "mattermost", "rocketchat"]
)
def test_the_whole_reason_and_the_annotation_mention_no_one(chat_type: str) -> None:
    chat = CHAT_TYPES[chat_type]
    build = failed_build(reason=f"first line\n{EVERY_PING}").model_copy(
        update={"annotation": f"flaky {EVERY_PING}"}
    )
    template = default_template(chat.template_name, chat.body)
    message = template.render(context(build, event_id=7, destination="ci"))
    assert isinstance(message, dict)

    assert "flaky" in json.dumps(message, ensure_ascii=False)
    assert mentions_in(chat_type, message) == []
