"""Issue 11: every default template shows what users want at a glance about a failed build:
each failed run's duration, the whole reason (folded when long), the build's annotation."""

from __future__ import annotations

import json
import re

import pytest

from bridge.chats import CHAT_TYPES
from bridge.render import context, default_template
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
