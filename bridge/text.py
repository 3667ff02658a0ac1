"""Words for people: counts with the right noun."""

from __future__ import annotations


def plural(count: int, one: str, many: str | None = None) -> str:
    """`1 source`, `2 sources`; `many` for nouns that do not just take an s."""
    return f"{count} {one if count == 1 else (many or one + 's')}"


def duration_text(seconds: float | None) -> str:
    """A span for people, its two largest units: `45s`, `3m 5s`, `2h 5m`, `3d 4h`; "" for None.

    The one formatter for build and run durations, ages on the status page and in the CLI.
    """
    if seconds is None:
        return ""
    total = max(round(seconds), 0)
    units = (("d", 86400), ("h", 3600), ("m", 60), ("s", 1))
    for index, (name, size) in enumerate(units[:-1]):
        if total >= size:
            smaller, small_size = units[index + 1]
            rest = total % size // small_size
            return f"{total // size}{name}" + (f" {rest}{smaller}" if rest else "")
    return f"{total}s"


# An error in a dead letter is one line; an exception's text can be a whole build.
ERROR_TEXT_LIMIT = 300


def describe_exception(exc: BaseException) -> str:
    """An unexpected exception as one short line of printable text."""
    text = " ".join("".join(c if c.isprintable() else " " for c in str(exc)).split())
    if len(text) > ERROR_TEXT_LIMIT:
        text = text[: ERROR_TEXT_LIMIT - 1] + "…"
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
