"""`${VAR}` in a config's strings, read from the environment; places in a config."""

from __future__ import annotations

import os
import re
from typing import Any

_ENV_REFERENCE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


class Unknown(str):
    """A preview's value that an unset `${VAR}` made: the config holds no real value there."""


def place(loc: tuple[int | str, ...] | list[int | str]) -> str:
    """('routes', 1, 'destinations', 0) -> 'routes[1].destinations[0]'."""
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "(top level)"


def unset_placeholder(name: str) -> str:
    """What a preview reads for an unset `${VAR}`: it never needs the secret itself."""
    return f"<unset {name}>"


def expand_environment(
    value: Any, loc: tuple[int | str, ...], unset: list[str], preview: bool = False
) -> Any:
    """Replace `${VAR}` in every string with the environment's value; each unset one is
    listed in `unset` with its place (and reads as a placeholder in a preview, in a string
    that is `Unknown`)."""
    if isinstance(value, dict):
        return {k: expand_environment(v, (*loc, k), unset, preview) for k, v in value.items()}
    if isinstance(value, list):
        return [expand_environment(v, (*loc, i), unset, preview) for i, v in enumerate(value)]
    if not isinstance(value, str):
        return value

    missing = len(unset)

    def substitute(match: re.Match[str]) -> str:
        name = match.group(1)
        if name in os.environ:
            return os.environ[name]
        unset.append(f"{place(loc)}: environment variable {name} is not set")
        return unset_placeholder(name) if preview else ""

    expanded = _ENV_REFERENCE.sub(substitute, value)
    return Unknown(expanded) if preview and len(unset) > missing else expanded
