"""What every chat shares: its destination settings and the one thing it does, send."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

import aiohttp
from pydantic import BaseModel, ConfigDict, Field

from bridge.durations import Duration
from bridge.outcome import Outcome

# A rendered message: a JSON document for chats that take one, text for the console.
Body = dict[str, Any] | str
# A chat's size check: None when a message fits, else what is over its limits.
Fits = Callable[[Body], str | None]
# A chat's shape check: None when a message has what the chat needs, else what is missing.
Check = Callable[[Body], str | None]
# The fields a chat adds to a rendered body when it sends it (a channel, a user name).
Prepare = Callable[[Any, Body], Body]


def as_rendered(settings: Any, body: Body) -> Body:
    """A chat that adds nothing sends the body as rendered."""
    return body


def needs_one_of(body: Body, *keys: str) -> str | None:
    """A check: the body is a JSON object with at least one of `keys`, not empty."""
    if not isinstance(body, dict):
        return "not a JSON object"
    if any(body.get(key) for key in keys):
        return None
    return f"needs {' or '.join(f'`{key}`' for key in keys)}"


class DestinationSettings(BaseModel):
    """The keys every `[[destinations]]` entry has, whatever its type."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1)
    type: str
    template: Path | None = None
    rate_limit: float = Field(default=1.0, ge=0, description="messages per second, 0 = no limit")
    burst: int = Field(default=3, ge=1)
    timeout: Duration = 10.0
    max_attempts: int = Field(default=0, ge=0, description="0 = no limit, only max_age")
    max_age: Duration = 24 * 3600.0
    max_failed_runs: int = Field(default=20, ge=0, description="failed runs listed at most")
    # Several builds due at once go as one message (bridge.digest); never on a chat that
    # threads, nor with a template that does not handle `digest`.
    digest: bool = True
    digest_max: int = Field(default=30, ge=1, description="builds in one digest at most")


class Chat(Protocol):
    async def send(self, body: Body, key: str) -> Outcome:
        """Build the request, send it, read the answer. Network errors may propagate."""
        ...


@runtime_checkable
class ThreadedChat(Chat, Protocol):
    """A chat that can answer in a thread and edit a message it posted (Slack's Web API).

    Follow-ups of a failure (still failing, fixed) go as replies to the first
    failure's message, which is edited to show the latest state.
    """

    async def reply(self, body: Body, key: str, thread: str) -> Outcome:
        """Post `body` as a reply in `thread` (a `Sent.ref` of an earlier send)."""
        ...

    async def update(self, thread: str, body: Body, key: str) -> Outcome:
        """Replace the message `thread` refers to with `body`; `key` names this edit, as
        `send`'s names a message (a chat that takes no idempotency key ignores it)."""
        ...

    def text_body(self, text: str) -> Body:
        """A message of plain text (a message marked as no longer belonging)."""
        ...


@dataclass(frozen=True)
class ChatType:
    """One chat: its `type` name, its settings, how to make it, and its default template.

    The default template is `templates/<template or name>.j2` (installed as
    the package `bridge.templates`); it renders a JSON
    document, or text when `body` is "text".
    """

    name: str
    settings: type[DestinationSettings]
    create: Callable[[Any, aiohttp.ClientSession], Chat]
    body: Literal["json", "text"] = "json"
    template: str = ""
    fits: Fits | None = None
    threads: bool = False  # a ThreadedChat: incidents live in threads (bridge.threads)
    # What its `send` adds to a body (called by `send` and by previews: one place).
    prepare: Prepare = as_rendered
    # The least a body must hold for this chat (check-config renders samples through it).
    check: Check | None = None

    @property
    def template_name(self) -> str:
        return f"{self.template or self.name}.j2"
