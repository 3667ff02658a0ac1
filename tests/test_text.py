"""Words for people: the one duration formatter and plurals."""

from __future__ import annotations

import pytest

from bridge.text import duration_text, plural


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (None, ""),
        (-3, "0s"),
        (0, "0s"),
        (0.4, "0s"),
        (45, "45s"),
        (60, "1m"),
        (75, "1m 15s"),
        (3600, "1h"),
        (3600 + 5 * 60 + 59, "1h 5m"),
        (86400 * 3 + 3600 * 4 + 1, "3d 4h"),
        (86400 * 40, "40d"),
    ],
)
def test_durations_show_their_two_largest_units(seconds: float | None, text: str) -> None:
    assert duration_text(seconds) == text


def test_plurals() -> None:
    assert plural(1, "source") == "1 source"
    assert plural(0, "source") == "0 sources"
    assert plural(2, "dead letter") == "2 dead letters"
    assert plural(2, "entry", "entries") == "2 entries"
