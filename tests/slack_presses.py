"""Slack's interaction requests as Slack sends them: a `block_actions` payload in the form
field `payload`, signed with the app's signing secret (docs.slack.dev, "Verifying requests
from Slack" and the block_actions payload reference)."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from typing import Any
from urllib.parse import urlencode

SIGNING_SECRET = "8f742231b10e8888abcd99yyyzzz85a5"
USER_ID = "U0123ABCD"


def block_actions(
    action_id: str,
    value: str,
    *,
    user_id: str = USER_ID,
    username: str = "ana",
    channel: str = "C0CHANNEL",
    message_ts: str = "1700000000.000100",
) -> dict[str, Any]:
    """A `block_actions` payload for a press of a button in a message, in Slack's shape."""
    return {
        "type": "block_actions",
        "user": {"id": user_id, "username": username, "name": username, "team_id": "T0TEAM"},
        "api_app_id": "A0APP",
        "token": "verification-token-unused",
        "container": {
            "type": "message",
            "message_ts": message_ts,
            "channel_id": channel,
            "is_ephemeral": False,
        },
        "trigger_id": "12321423423.333649436676.d8c1bb837935619ccad0f624c448ffb3",
        "team": {"id": "T0TEAM", "domain": "example"},
        "enterprise": None,
        "is_enterprise_install": False,
        "channel": {"id": channel, "name": "ci-alerts"},
        "message": {"type": "message", "ts": message_ts, "text": "…", "blocks": []},
        "state": {"values": {}},
        "response_url": "https://hooks.slack.com/actions/T0TEAM/1/abc",
        "actions": [
            {
                "action_id": action_id,
                "block_id": "jobserv-bridge",
                "text": {"type": "plain_text", "text": "Acknowledge", "emoji": True},
                "value": value,
                "type": "button",
                "action_ts": "1700000100.000200",
            }
        ],
    }


def form(payload: dict[str, Any]) -> bytes:
    return urlencode({"payload": json.dumps(payload)}).encode()


def signed(
    body: bytes, secret: str = SIGNING_SECRET, timestamp: int | None = None
) -> dict[str, str]:
    """The headers Slack sends with `body`."""
    stamp = str(int(time.time()) if timestamp is None else timestamp)
    base = f"v0:{stamp}:".encode() + body
    digest = hmac.new(secret.encode(), base, hashlib.sha256).hexdigest()
    return {
        "X-Slack-Signature": f"v0={digest}",
        "X-Slack-Request-Timestamp": stamp,
        "Content-Type": "application/x-www-form-urlencoded",
    }
