"""One module per chat type. Each module names its type in a module-level `CHAT`."""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Mapping

import aiohttp

from bridge.chats.base import (
    Body,
    Chat,
    ChatType,
    DestinationSettings,
    Fits,
    ThreadedChat,
)


def _discover() -> dict[str, ChatType]:
    found: dict[str, ChatType] = {}
    for module_info in pkgutil.iter_modules(__path__):
        module = importlib.import_module(f"{__name__}.{module_info.name}")
        chat = getattr(module, "CHAT", None)
        if isinstance(chat, ChatType):
            found[chat.name] = chat
    return found


CHAT_TYPES: dict[str, ChatType] = _discover()


def create_chats(
    destinations: Mapping[str, DestinationSettings], session: aiohttp.ClientSession
) -> dict[str, Chat]:
    """A chat for each configured destination, sending through `session`."""
    return {
        name: CHAT_TYPES[settings.type].create(settings, session)
        for name, settings in destinations.items()
    }


__all__ = [
    "CHAT_TYPES",
    "Body",
    "Chat",
    "ChatType",
    "DestinationSettings",
    "Fits",
    "ThreadedChat",
    "create_chats",
]
