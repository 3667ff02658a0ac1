"""What a webhook's build becomes in the store."""

from __future__ import annotations

import time

from bridge.jobserv import Build
from bridge.store import NewEvent


def new_event(build: Build, body: bytes) -> NewEvent:
    """The event to store for a parsed build and the webhook body it came in, received now."""
    return NewEvent(
        key=build.identity,
        factory=build.factory,
        trigger=build.trigger_name or "",
        build_id=build.build_id,
        status=build.status,
        body=body,
        received_at=time.time(),
        completed_at=build.completed.timestamp() if build.completed else None,
    )
