"""Words for people: counts with the right noun."""

from __future__ import annotations


def plural(count: int, one: str, many: str | None = None) -> str:
    """`1 source`, `2 sources`; `many` for nouns that do not just take an s."""
    return f"{count} {one if count == 1 else (many or one + 's')}"
