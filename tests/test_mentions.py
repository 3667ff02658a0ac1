"""Mentions: who a route names (and the owners of failed runs) is told about failures.

Signed webhooks go to the real app, which posts to every chat type on a local fake chat.
Each chat's message is then read the way that chat finds mentions in it, to check that
the people the config names are mentioned in failure messages, in passing builds nobody
is, and whatever a build carries (a trigger, a reason, a run name) never mentions anyone.
"""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from bridge.config import Config
from bridge.server import create_app
from tests.conftest import make_config
from tests.fakes.chat_server import FakeChat, Reply
from tests.test_chats import (
    DISCORD,
    GOOGLE_CHAT,
    MATRIX,
    MATTERMOST,
    ROCKET_CHAT,
    TEAMS,
    ChatCase,
)
from tests.test_policy import build_body, generic_destination, post, settings

ClientFactory = Callable[[Any], Awaitable[TestClient[Any, Any]]]

SLACK_PATH = "/services/T000/B000/XXXX"
# The fixture's runs: build-amd64-partner passed, build-armhf failed, build-aarch64 passed.
OWNERS = """
[[routes.owners]]
runs = "build-arm*"
mention = ["<@UARM>"]
[[routes.owners]]
runs = "build-amd64*"
mention = ["<@UAMD>"]
"""
# Each chat's own form of a mention, as a user would configure it.
MENTIONS: dict[str, list[str]] = {
    "slack": ["<@U456>", "<!subteam^S123>"],
    "discord": ["<@123456789>", "<@&987654321>", "<@!42>"],
    "googlechat": ["<users/112233>"],
    "mattermost": ["@alice", "@ci-team"],
    "rocketchat": ["@alice"],
    "matrix": ["@alice:example.org"],
    "teams": ["Alice Example <alice@example.com>", "bob@example.com", "CI team"],
    "generic": ["@alice", "<@U456>"],
}
CASES: dict[str, ChatCase] = {
    "discord": DISCORD,
    "googlechat": GOOGLE_CHAT,
    "mattermost": MATTERMOST,
    "rocketchat": ROCKET_CHAT,
    "matrix": MATRIX,
    "teams": TEAMS,
}
# What a build could carry to ping people, in every chat's syntax.
PINGS = "@channel @here @all @everyone @room <!channel> <!here> <@U999> <@&555> <users/all>"


def route(name: str, mention: list[str], extra: str = "") -> str:
    return (
        f'\n[[routes]]\nnotify = ["failed", "passed"]\ndestinations = ["{name}"]\n'
        f"mention = {json.dumps(mention)}\n{extra}"
    )


def slack_destination(fake: FakeChat) -> str:
    return f"""
[[destinations]]
name = "slack"
type = "slack-webhook"
url = "{fake.url(SLACK_PATH)}"
timeout = "0.5s"
rate_limit = 0
"""


def every_chat_config(folder: Path, fake: FakeChat) -> Config:
    """Every chat type, each with a route mentioning people in the chat's own form."""
    text = settings() + slack_destination(fake) + generic_destination(fake, "generic")
    text += "".join(case.destination(fake, name) for name, case in CASES.items())
    text += "".join(route(name, mention) for name, mention in MENTIONS.items())
    return make_config(folder, text)


def answer_as_every_chat(fake: FakeChat) -> None:
    fake.default(None, MATRIX.success)  # Matrix's path ends with the transaction id
    fake.default(SLACK_PATH, Reply(200, "ok"))
    for case in CASES.values():
        fake.default(case.path, case.success)


async def messages_for(
    client: TestClient[Any, Any], fake: FakeChat, body: bytes
) -> dict[str, dict[str, Any]]:
    """Post a build and wait for every destination's message: {destination: message}."""
    before = len(fake.requests)
    answer = await post(client, body)
    arrived = (await fake.wait_for(before + answer["deliveries"]))[before:]
    paths = {"slack": SLACK_PATH, "generic": "/generic"} | {
        name: case.path for name, case in CASES.items()
    }
    found = {}
    for name, path in paths.items():
        [request] = [r for r in arrived if r.path.startswith(path)]
        found[name] = request.json
    return found


# How each chat finds mentions in the texts it reads them from.


def slack_mentions(message: dict[str, Any]) -> list[str]:
    texts = [message["text"]] + [
        block["text"]["text"]
        for block in message["blocks"]
        if block["type"] == "section" and block["text"]["type"] == "mrkdwn"
    ]
    return [m for text in texts for m in re.findall(r"<[@!][^>|]*>", text)]


def mattermost_mentions(message: dict[str, Any]) -> list[str]:
    """Mattermost splits a post into words of letters, digits and `:._-@`, and reads the
    words starting with @ in its text and its attachments' pretext, text and field values."""
    texts = [message["text"]]
    for attachment in message.get("attachments", []):
        texts += [attachment.get("pretext", ""), attachment.get("text", "")]
        texts += [str(field["value"]) for field in attachment.get("fields", [])]
    words = [w for text in texts for w in re.split(r"[^\w:.\-@]+", text)]
    return [word for word in words if word.startswith("@") and len(word) > 1]


def rocketchat_mentions(message: dict[str, Any]) -> list[str]:
    """Rocket.Chat: `@name` at a line's start or after a space (or a tag's end)."""
    texts = [message["text"]] + [a.get("text", "") for a in message.get("attachments", [])]
    return [
        "@" + m for text in texts for m in re.findall(r"(?:^|(?<=[\s>]))@([\w.-]+)", text, re.M)
    ]


def teams_mentions(message: dict[str, Any]) -> list[tuple[str, str]]:
    """Teams: a card's msteams.entities, each (its user id, its name), that notify whoever
    they name where their `<at>name</at>` text is in the card."""
    card = message["attachments"][0]["content"]
    texts = all_strings(card["body"])
    return [
        (entity["mentioned"]["id"], entity["mentioned"]["name"])
        for entity in card.get("msteams", {}).get("entities", [])
        if entity["type"] == "mention" and any(entity["text"] in text for text in texts)
    ]


def googlechat_mentions(message: dict[str, Any]) -> list[str]:
    """Google Chat reads `<users/...>` in a message's text; a card shows it as it is."""
    return re.findall(r"<users/[^>]*>", message.get("text", ""))


# --- the tests ----------------------------------------------------------------------------


async def test_every_chat_mentions_whom_the_route_names_on_a_failure(
    aiohttp_client: ClientFactory, fake_chat: FakeChat, tmp_path: Path
) -> None:
    answer_as_every_chat(fake_chat)
    client = await aiohttp_client(create_app(every_chat_config(tmp_path, fake_chat)))

    sent = await messages_for(client, fake_chat, build_body(68))

    slack = sent["slack"]
    assert slack_mentions(slack) == ["<@U456>", "<!subteam^S123>"] * 2  # in text and a section
    sections = [b["text"]["text"] for b in slack["blocks"] if b["type"] == "section"]
    assert "<@U456> <!subteam^S123>" in sections

    discord = sent["discord"]
    assert discord["content"] == "<@123456789> <@&987654321> <@!42>"
    assert discord["allowed_mentions"] == {
        "parse": [],
        "users": ["123456789", "42"],
        "roles": ["987654321"],
    }

    assert googlechat_mentions(sent["googlechat"]) == ["<users/112233>"]
    assert sent["googlechat"]["text"] == "<users/112233>"
    assert mattermost_mentions(sent["mattermost"]) == ["@alice", "@ci-team"]
    assert rocketchat_mentions(sent["rocketchat"]) == ["@alice"]

    matrix = sent["matrix"]
    assert matrix["m.mentions"] == {"user_ids": ["@alice:example.org"]}
    assert matrix["body"].endswith("\n@alice:example.org")
    assert (
        '<a href="https://matrix.to/#/@alice:example.org">@alice:example.org</a>'
        in matrix["formatted_body"]
    )

    # "Name <UPN or object id>" and a bare UPN ping; other text is shown as it is.
    assert teams_mentions(sent["teams"]) == [
        ("alice@example.com", "Alice Example"),
        ("bob@example.com", "bob@example.com"),
    ]
    card = sent["teams"]["attachments"][0]["content"]
    mentioned = "<at>Alice Example</at> <at>bob@example.com</at> CI team"
    assert {"type": "TextBlock", "wrap": True, "text": mentioned} in card["body"]

    assert sent["generic"]["mentions"] == ["@alice", "<@U456>"]


async def test_nobody_is_mentioned_when_a_build_passes(
    aiohttp_client: ClientFactory, fake_chat: FakeChat, tmp_path: Path
) -> None:
    answer_as_every_chat(fake_chat)
    client = await aiohttp_client(create_app(every_chat_config(tmp_path, fake_chat)))

    sent = await messages_for(client, fake_chat, build_body(68, "PASSED"))

    assert slack_mentions(sent["slack"]) == []
    assert "content" not in sent["discord"]
    assert sent["discord"]["allowed_mentions"] == {"parse": []}
    assert googlechat_mentions(sent["googlechat"]) == []
    assert "text" not in sent["googlechat"]
    assert mattermost_mentions(sent["mattermost"]) == []
    assert rocketchat_mentions(sent["rocketchat"]) == []
    assert sent["matrix"]["m.mentions"] == {}
    assert teams_mentions(sent["teams"]) == []
    assert "Alice Example" not in json.dumps(sent["teams"])
    assert sent["generic"]["mentions"] == []


async def test_what_a_build_carries_never_mentions_anyone(
    aiohttp_client: ClientFactory, fake_chat: FakeChat, tmp_path: Path
) -> None:
    answer_as_every_chat(fake_chat)
    client = await aiohttp_client(create_app(every_chat_config(tmp_path, fake_chat)))
    body = build_body(
        68,
        trigger=f"devel {PINGS}",
        reason=f"{PINGS}\nmore {PINGS}",
        run_names=(f"ok {PINGS}", f"build-armhf {PINGS}", "build-aarch64"),
    )

    sent = await messages_for(client, fake_chat, body)

    # Only the configured mentions, as in a build without them.
    assert slack_mentions(sent["slack"]) == ["<@U456>", "<!subteam^S123>"] * 2
    discord = sent["discord"]
    assert discord["content"] == "<@123456789> <@&987654321> <@!42>"
    assert discord["allowed_mentions"]["parse"] == []  # @everyone in the embeds stays text
    assert googlechat_mentions(sent["googlechat"]) == ["<users/112233>"]
    assert mattermost_mentions(sent["mattermost"]) == ["@alice", "@ci-team"]
    assert rocketchat_mentions(sent["rocketchat"]) == ["@alice"]
    assert sent["matrix"]["m.mentions"] == {"user_ids": ["@alice:example.org"]}
    assert sent["generic"]["mentions"] == ["@alice", "<@U456>"]
    # The build's text is still shown, as text.
    assert "devel @channel" in sent["slack"]["blocks"][0]["text"]["text"]
    assert "&lt;!channel&gt;" in sent["slack"]["text"]
    assert "@everyone" in sent["discord"]["embeds"][0]["title"]


def mention_config(folder: Path, fake: FakeChat, routes: str) -> Config:
    return make_config(folder, settings() + generic_destination(fake, "alerts") + routes)


async def test_owners_of_failed_runs_are_mentioned_by_run_name(
    aiohttp_client: ClientFactory, fake_chat: FakeChat, tmp_path: Path
) -> None:
    config = mention_config(tmp_path, fake_chat, route("alerts", ["<@ULEAD>"], OWNERS))
    client = await aiohttp_client(create_app(config))

    await post(client, build_body(68))
    [failed] = await fake_chat.wait_for(1)
    await post(client, build_body(69, run_names=("build-amd64-partner", "build-amd64-x")))
    [_, renamed] = await fake_chat.wait_for(2)

    # build-armhf failed; build-amd64-partner matches an owner's glob but passed.
    assert failed.json["mentions"] == ["<@ULEAD>", "<@UARM>"]
    # Now the failed run is build-amd64-x: its owner is mentioned instead.
    assert renamed.json["mentions"] == ["<@ULEAD>", "<@UAMD>"]


async def test_routes_to_one_destination_mention_everyone_they_name_once(
    aiohttp_client: ClientFactory, fake_chat: FakeChat, tmp_path: Path
) -> None:
    routes = (
        route("alerts", ["<@U1>", "<@U2>"], OWNERS)
        + route("alerts", ["<@U2>", "<@U3>"]).replace(
            "[[routes]]", '[[routes]]\ntriggers = ["containers-*"]'
        )
        + route("alerts", ["<@U4>"]).replace("[[routes]]", '[[routes]]\ntriggers = ["platform-*"]')
    )
    client = await aiohttp_client(create_app(mention_config(tmp_path, fake_chat, routes)))

    answer = await post(client, build_body(68))
    [message] = await fake_chat.wait_for(1)

    assert answer["deliveries"] == 1
    # Route order, each once; the platform-* route does not match this trigger.
    assert message.json["mentions"] == ["<@U1>", "<@U2>", "<@UARM>", "<@U3>"]


async def test_a_route_that_does_not_fire_mentions_no_one(
    aiohttp_client: ClientFactory, fake_chat: FakeChat, tmp_path: Path
) -> None:
    routes = route("alerts", []) + route("alerts", ["<@UFIX>"]).replace(
        'notify = ["failed", "passed"]', 'notify = ["fixed"]'
    )
    client = await aiohttp_client(create_app(mention_config(tmp_path, fake_chat, routes)))

    await post(client, build_body(68))
    [failure] = await fake_chat.wait_for(1)

    assert failure.json["mentions"] == []  # the fixed route's people wait for a fix


async def test_discord_pings_everyone_only_when_the_config_says_so(
    aiohttp_client: ClientFactory, fake_chat: FakeChat, tmp_path: Path
) -> None:
    fake_chat.default(DISCORD.path, DISCORD.success)
    config = make_config(
        tmp_path,
        settings() + DISCORD.destination(fake_chat, "discord") + route("discord", ["@here"]),
    )
    client = await aiohttp_client(create_app(config))

    await post(client, build_body(68, trigger="devel <@123> <@&456>"))
    [request] = await fake_chat.wait_for(1)

    assert request.json["content"] == "@here"
    assert request.json["allowed_mentions"] == {"parse": ["everyone"]}  # no user, no role


# --- every build field, every chat -------------------------------------------------------

# Mentions in every chat's syntax, and a URL path holding them.
EVERY_PING = PINGS + " @\u2060x <at>Alice</at> <@!42> @ci-team"
PING_PATH = "@channel/@here/@all/@room"
# A bare mention as Slack, Mattermost, Rocket.Chat and Matrix clients read it in text.
BARE_MENTION = re.compile(r"(?<![\w\u2060])@(?:here|channel|everyone|all|room)\b")


def pinging_build() -> bytes:
    """A failed build whose every field a message shows is made of mentions."""
    data = json.loads(build_body(68, trigger=f"devel {EVERY_PING}", reason=EVERY_PING))
    data["url"] = "https://api.foundries.io/projects/@channel/lmp/builds/68/"
    data["web_url"] = f"https://ci.foundries.io/{PING_PATH}/68"
    for run in data["runs"]:
        run["web_url"] = f"https://ci.foundries.io/{PING_PATH}/{run['name']}"
        run["name"] = f"{run['name']} {EVERY_PING}"
        run["host_tag"] = EVERY_PING
        run["log_url"] = f"https://api.foundries.io/{PING_PATH}/console.log"
    return json.dumps(data).encode()


def all_strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for item in value.values() for s in all_strings(item)]
    if isinstance(value, list):
        return [s for item in value for s in all_strings(item)]
    return []


def slack_texts_read_for_mentions(message: dict[str, Any]) -> list[str]:
    """The top-level text, and every mrkdwn text object Slack parses (not "verbatim")."""
    texts = [message["text"]]
    for block in message["blocks"]:
        objects = [block.get("text"), *block.get("elements", [])]
        texts += [
            o["text"]
            for o in objects
            if isinstance(o, dict) and o.get("type") == "mrkdwn" and not o.get("verbatim")
        ]
    return texts


def slack_only_configured(slack: dict[str, Any]) -> None:
    """The configured mentions, in the text and their own section; the sections with build
    data are verbatim (Slack parses no bare @here in them), and nothing else has any."""
    assert slack_mentions(slack) == ["<@U456>", "<!subteam^S123>"] * 2
    parsed = slack_texts_read_for_mentions(slack)
    assert parsed[1:] == ["<@U456> <!subteam^S123>"]
    assert [BARE_MENTION.findall(text) for text in parsed] == [[], []]


def discord_only_configured(discord: dict[str, Any]) -> None:
    """Embeds never ping; the content is the configured mentions, and only they may ping."""
    assert discord["content"] == "<@123456789> <@&987654321> <@!42>"
    assert discord["allowed_mentions"] == {
        "parse": [],
        "users": ["123456789", "42"],
        "roles": ["987654321"],
    }


def googlechat_only_configured(chat: dict[str, Any]) -> None:
    """Only the text mentions; no plain text (fallback, header) holds a <users/...>."""
    assert googlechat_mentions(chat) == ["<users/112233>"]
    assert chat["text"] == "<users/112233>"
    header = chat["cardsV2"][0]["card"]["header"]
    for text in (chat["fallbackText"], header["title"], header["subtitle"]):
        assert "<users/" not in text
    assert all("<users/" not in text for text in all_strings(chat["cardsV2"]))


def mattermost_only_configured(message: dict[str, Any]) -> None:
    assert mattermost_mentions(message) == ["@alice", "@ci-team"]


def rocketchat_only_configured(message: dict[str, Any]) -> None:
    assert rocketchat_mentions(message) == ["@alice"]


def matrix_only_configured(matrix: dict[str, Any]) -> None:
    """m.mentions names the configured user only, and a server that still reads @room in
    the body (no intentional mentions) finds none."""
    assert matrix["m.mentions"] == {"user_ids": ["@alice:example.org"]}
    assert BARE_MENTION.findall(matrix["body"]) == []
    assert BARE_MENTION.findall(matrix["formatted_body"]) == []
    assert "matrix.to/#/@alice:example.org" in matrix["formatted_body"]


def teams_only_configured(message: dict[str, Any]) -> None:
    """A card mentions whom its msteams.entities name, wherever their <at>name</at> is: the
    entities are the configured ones, and only the mentions' line holds an <at>."""
    assert teams_mentions(message) == [
        ("alice@example.com", "Alice Example"),
        ("bob@example.com", "bob@example.com"),
    ]
    card = message["attachments"][0]["content"]
    tagged = [text for text in all_strings(card["body"]) if "<at>" in text]
    assert tagged == ["<at>Alice Example</at> <at>bob@example.com</at> CI team"]


def generic_only_configured(document: dict[str, Any]) -> None:
    """The generic document is data: the build's text as it is, the mentions apart."""
    assert document["mentions"] == ["@alice", "<@U456>"]
    assert document["trigger"] == f"devel {EVERY_PING}"


ONLY_CONFIGURED: dict[str, Callable[[dict[str, Any]], None]] = {
    "slack": slack_only_configured,
    "discord": discord_only_configured,
    "googlechat": googlechat_only_configured,
    "mattermost": mattermost_only_configured,
    "rocketchat": rocketchat_only_configured,
    "matrix": matrix_only_configured,
    "teams": teams_only_configured,
    "generic": generic_only_configured,
}


@pytest.mark.parametrize("chat", ONLY_CONFIGURED)
async def test_no_field_of_a_build_mentions_anyone(
    aiohttp_client: ClientFactory, fake_chat: FakeChat, tmp_path: Path, chat: str
) -> None:
    answer_as_every_chat(fake_chat)
    client = await aiohttp_client(create_app(every_chat_config(tmp_path, fake_chat)))

    sent = await messages_for(client, fake_chat, pinging_build())

    ONLY_CONFIGURED[chat](sent[chat])
