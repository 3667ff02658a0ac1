"""Slack's button presses: the signature check and what a press asks for.

A failure root in a `slack-api` destination carries two buttons, "Acknowledge" and
"Mute 24h" (templates/slack.j2). Slack posts a press to `POST /slack/interactions` as a
form whose field `payload` is the JSON of a `block_actions` interaction, signed with the
app's signing secret:
`X-Slack-Signature: v0=<hex HMAC-SHA256 of "v0:{X-Slack-Request-Timestamp}:{raw body}">`.
A timestamp more than five minutes away is refused (Slack's rule against replays), and so
is a signature seen before within those five minutes.

The button's `value` carries the incident it is about (destination, factory, trigger and
the root's anchor build): Slack gives it back as it was posted, and only a request signed
with the secret can carry one.
"""

from __future__ import annotations

import json
import re
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import parse_qs

from pydantic import BaseModel, ConfigDict, SecretStr, field_validator
from slack_sdk.signature import Clock, SignatureVerifier

from bridge.silences import NewSilence, Silence, literal

SIGNATURE_HEADER = "X-Slack-Signature"
TIMESTAMP_HEADER = "X-Slack-Request-Timestamp"
# Slack's rule: a request whose timestamp is more than five minutes away may be a replay.
MAX_SKEW = 5 * 60.0
# An interaction payload is a few KiB; Slack includes the whole message pressed on.
MAX_BODY = 256 * 1024
# Slack's limit on a button's value.
VALUE_LIMIT = 2000

# How long the "Mute 24h" button mutes.
MUTE_FOR = 24 * 3600.0
# A press while the trigger is muted there for this long at least adds no silence: a double
# press, or two people pressing the same root, makes one.
MUTED_ENOUGH = MUTE_FOR - 3600.0

ACKNOWLEDGE = "jobserv-bridge-acknowledge"
MUTE = "jobserv-bridge-mute"
Action = Literal["acknowledge", "mute"]
_ACTIONS: dict[str, Action] = {ACKNOWLEDGE: "acknowledge", MUTE: "mute"}

_USER_ID = re.compile(r"[UW][A-Z0-9]{2,40}")
_SIGNATURE = re.compile(r"v0=[0-9a-f]{64}")
_NAME_LIMIT = 80


class SlackConfig(BaseModel):
    """`[slack]`: the Slack app behind the buttons of `slack-api` destinations."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    signing_secret: SecretStr

    @field_validator("signing_secret")
    @classmethod
    def _not_empty(cls, secret: SecretStr) -> SecretStr:
        if not secret.get_secret_value().strip():
            raise ValueError("must not be empty")
        return secret


@dataclass(frozen=True)
class IncidentRef:
    """An incident as a destination shows it: its root, anchored at a build."""

    destination: str
    factory: str
    trigger: str
    anchor: int


def button_value(ref: IncidentRef) -> str:
    """What the buttons of `ref`'s root carry; "" when it is over Slack's limit (no buttons)."""
    value = json.dumps(
        [ref.destination, ref.factory, ref.trigger, ref.anchor],
        ensure_ascii=False,
        separators=(",", ":"),
    )
    return value if len(value) <= VALUE_LIMIT else ""


class NotAPress(ValueError):
    """A signed request that is not a button press this bridge understands."""


def read_value(value: object) -> IncidentRef:
    try:
        data = json.loads(value) if isinstance(value, str) else None
    except json.JSONDecodeError:
        data = None
    if not (
        isinstance(data, list)
        and len(data) == 4
        and all(isinstance(part, str) for part in data[:3])
        and isinstance(data[3], int)
        and not isinstance(data[3], bool)
    ):
        raise NotAPress("the button's value is not an incident of this bridge")
    return IncidentRef(data[0], data[1], data[2], data[3])


@dataclass(frozen=True)
class SlackUser:
    id: str  # U… or W…: safe to write as <@id>
    name: str  # the username, as Slack gave it ("" if none)

    @property
    def author(self) -> str:
        """How a silence made by this user names its author."""
        return f"{self.name} (Slack {self.id})" if self.name else f"Slack {self.id}"


@dataclass(frozen=True)
class ButtonPress:
    action: Action
    incident: IncidentRef
    user: SlackUser
    channel: str  # where the pressed message is
    message_ts: str


def mute(press: ButtonPress, now: float) -> NewSilence:
    """The silence "Mute 24h" makes: that trigger (and no other), at that destination."""
    incident = press.incident
    return NewSilence(
        factory=literal(incident.factory),
        trigger=literal(incident.trigger),
        destination=incident.destination,
        starts_at=now,
        ends_at=now + MUTE_FOR,
        comment=f"Muted in Slack (the incident since #{incident.anchor})",
        author=press.user.author,
    )


def muting_already(wanted: NewSilence, silences: Iterable[Silence]) -> Silence | None:
    """A silence in force at `wanted`'s start that mutes the same, for MUTED_ENOUGH more."""
    for silence in silences:
        if (
            (silence.factory, silence.trigger, silence.destination)
            == (wanted.factory, wanted.trigger, wanted.destination)
            and silence.starts_at <= wanted.starts_at
            and silence.ends_at >= wanted.starts_at + MUTED_ENOUGH
        ):
            return silence
    return None


def parse_press(body: bytes) -> ButtonPress | None:
    """The press a signed interaction body carries; None for an interaction that is not one
    of our buttons (answered 200, nothing done). Raises NotAPress for a body that is not
    a `block_actions` interaction."""
    payload = _payload(body)
    if payload.get("type") != "block_actions":
        raise NotAPress(f"not a block_actions interaction: {str(payload.get('type'))[:40]!r}")
    actions = payload.get("actions")
    if not isinstance(actions, list):
        raise NotAPress("a block_actions interaction without actions")
    ours = [a for a in actions if isinstance(a, dict) and a.get("action_id") in _ACTIONS]
    if not ours:
        return None
    action = ours[0]
    container = _object(payload, "container")
    channel = container.get("channel_id") or _object(payload, "channel").get("id")
    message_ts = container.get("message_ts") or _object(payload, "message").get("ts")
    if not isinstance(channel, str) or not isinstance(message_ts, str):
        raise NotAPress("the interaction does not say which message was pressed")
    return ButtonPress(
        _ACTIONS[action["action_id"]],
        read_value(action.get("value")),
        _user(_object(payload, "user")),
        channel,
        message_ts,
    )


def _payload(body: bytes) -> dict[str, Any]:
    try:
        fields = parse_qs(body.decode("utf-8"), max_num_fields=50, strict_parsing=True)
    except (UnicodeDecodeError, ValueError):
        raise NotAPress("the body is not a form") from None
    found = fields.get("payload", [])
    if len(found) != 1:
        raise NotAPress("the form has no (single) field payload")
    try:
        payload = json.loads(found[0])
    except json.JSONDecodeError:
        raise NotAPress("the field payload is not JSON") from None
    if not isinstance(payload, dict):
        raise NotAPress("the field payload is not a JSON object")
    return payload


def _object(data: dict[str, Any], name: str) -> dict[str, Any]:
    found = data.get(name)
    return found if isinstance(found, dict) else {}


def _user(data: dict[str, Any]) -> SlackUser:
    user_id = data.get("id")
    if not isinstance(user_id, str) or not _USER_ID.fullmatch(user_id):
        raise NotAPress("the interaction does not say who pressed the button")
    name = data.get("username") or data.get("name") or ""
    name = "".join(c for c in str(name) if c.isprintable())[:_NAME_LIMIT]
    return SlackUser(user_id, name)


class SignatureCheck:
    """Slack's signature on a request, with the five-minute rule and a memory of the
    signatures seen within those minutes (a replayed request is refused)."""

    def __init__(self, secret: str, clock: Callable[[], float] = time.time) -> None:
        self.verifier = SignatureVerifier(secret, clock=_Clock(clock))
        self.clock = clock
        self.seen: OrderedDict[str, float] = OrderedDict()

    def refusal(self, body: bytes, headers: Mapping[str, str]) -> str | None:
        """Why the request is refused (one line, for a 401), or None when it is Slack's."""
        signature = headers.get(SIGNATURE_HEADER)
        stamp = headers.get(TIMESTAMP_HEADER)
        if signature is None or stamp is None:
            return f"missing {SIGNATURE_HEADER} or {TIMESTAMP_HEADER} header"
        if not stamp.isdigit() or len(stamp) > 12:
            return f"malformed {TIMESTAMP_HEADER} header: expected Unix seconds"
        now = self.clock()
        if abs(now - int(stamp)) > MAX_SKEW:
            return "the request's timestamp is more than 5 minutes away (a replay?)"
        if not _SIGNATURE.fullmatch(signature):
            return f"malformed {SIGNATURE_HEADER} header: expected v0=<64 hex digits>"
        try:
            valid = self.verifier.is_valid(body, stamp, signature)
        except (UnicodeDecodeError, ValueError):
            valid = False
        if not valid:
            return "the signature does not match the signing secret"
        self._forget(now)
        if signature in self.seen:
            return "this request was received before (a replay)"
        self.seen[signature] = now
        return None

    def _forget(self, now: float) -> None:
        while self.seen and next(iter(self.seen.values())) < now - 2 * MAX_SKEW:
            self.seen.popitem(last=False)


class _Clock(Clock):
    def __init__(self, now: Callable[[], float]) -> None:
        self._now = now

    def now(self) -> float:
        return self._now()
