"""The chats' size checks are total: any JSON value in, a problem (one line) or None out.

A custom template can render any JSON document; a check that raised on one would fail
that delivery for a reason that is not the message's (and once jammed its lane).
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bridge.chats import CHAT_TYPES
from bridge.chats.base import Fits
from bridge.chats.limits import encode_json

CHECKS: dict[str, Fits] = {
    name: chat.fits for name, chat in sorted(CHAT_TYPES.items()) if chat.fits is not None
}

# The keys the checks look into, so that generated documents reach every branch.
KEYS = ["blocks", "text", "type", "elements", "content", "embeds", "fields", "title"]
KEYS += ["description", "footer", "author", "name", "value", "cardsV2", "card", "sections"]
KEYS += ["widgets", "attachments", "pretext", "fallback"]

scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False)
    | st.text(max_size=20)
    | st.sampled_from(["header", "section", "x" * 5000])
)
json_values = st.recursive(
    scalars,
    lambda children: (
        st.lists(children, max_size=55)
        | st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=5), children, max_size=6)
    ),
    max_leaves=60,
)
documents = st.fixed_dictionaries({}, optional=dict.fromkeys(KEYS, json_values))


def assert_total(fits: Fits, body: Any) -> None:
    problem = fits(body)
    assert problem is None or (isinstance(problem, str) and problem and "\n" not in problem)


@pytest.mark.parametrize("chat", sorted(CHECKS))
@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(body=documents | json_values)
def test_any_json_value_gives_a_problem_or_none(chat: str, body: Any) -> None:
    assert_total(CHECKS[chat], body)


@pytest.mark.parametrize("chat", sorted(CHECKS))
@pytest.mark.parametrize(
    "body",
    [
        {"blocks": 5},
        {"blocks": "text"},
        {"blocks": {"a": 1}},
        {"blocks": [{"type": "section", "elements": 3}]},
        {"blocks": [{"text": "plain"}, None, 7]},
        {"embeds": 1, "attachments": "x", "cardsV2": {"card": 2}},
        {"embeds": [{"fields": {"name": 1}}], "attachments": [{"fields": 1}]},
        "just text",
    ],
    ids=repr,
)
def test_odd_shapes_of_a_custom_template(chat: str, body: Any) -> None:
    assert_total(CHECKS[chat], body)


def test_slack_still_counts_what_it_can_read() -> None:
    fits = CHECKS["slack-webhook"]

    assert fits({"blocks": [{"type": "section", "text": {"text": "x" * 3001}}]}) is not None
    assert fits({"blocks": [{}] * 51}) == "51 blocks (limit 50)"
    assert fits({"blocks": 5, "text": "x" * 40001}) is not None
    assert fits({"blocks": 5, "text": "fine"}) is None


def _encoded(body: Any) -> bytes:
    return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(bodies=st.lists(documents | json_values, min_size=1, max_size=80), data=st.data())
def test_a_body_is_sent_as_its_own_encoding_whatever_was_encoded_before(
    bodies: list[Any], data: st.DataObject
) -> None:
    """Encodings are kept by identity (one message goes to several destinations): a body
    encoded again gives the same bytes, and a new body made where a dropped one lived (the
    same id) gives its own, however many came between."""
    kept: list[Any] = []
    for body in bodies:
        assert encode_json(body) == _encoded(body)
        if data.draw(st.booleans()):
            kept.append(body)  # the others are dropped: their ids are free again
        if kept:
            again = data.draw(st.sampled_from(kept))
            assert encode_json(again) == _encoded(again)
        fresh = {"text": f"made after {len(kept)}"}  # often at a freed body's address
        assert encode_json(fresh) == _encoded(fresh)
