"""One module per chat type. Each module names its type in a module-level `CHAT`."""

from __future__ import annotations

import importlib
import pkgutil

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

__all__ = ["CHAT_TYPES", "Body", "Chat", "ChatType", "DestinationSettings", "Fits", "ThreadedChat"]
