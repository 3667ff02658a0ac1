"""Test doubles for jobserv-bridge tests (see chat_server.FakeChat)."""
