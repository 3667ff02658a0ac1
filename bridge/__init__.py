"""jobserv-bridge: Foundries.io JobServ build webhooks to chat, durably.

intake (server) -> store -> delivery -> chats
"""

__version__ = "0.1.0"
