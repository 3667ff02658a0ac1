"""Prints each message to standard output: the quick start's chat, and a debugging aid."""

from __future__ import annotations

import json
import sys
from typing import Literal

import aiohttp
from pydantic import Field

from bridge.chats.base import Body, ChatType, DestinationSettings
from bridge.outcome import Outcome, Sent


class ConsoleSettings(DestinationSettings):
    type: Literal["console"]
    rate_limit: float = Field(default=0.0, ge=0)
    max_failed_runs: int = Field(default=100, ge=0)


class Console:
    def __init__(self, settings: ConsoleSettings, session: aiohttp.ClientSession) -> None:
        self.settings = settings

    async def send(self, body: Body, key: str) -> Outcome:
        text = body if isinstance(body, str) else json.dumps(body, indent=2, ensure_ascii=False)
        sys.stdout.write(text.rstrip("\n") + "\n")
        sys.stdout.flush()
        return Sent()


CHAT = ChatType("console", ConsoleSettings, Console, body="text")
