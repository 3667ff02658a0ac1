"""`jobserv-bridge silence add|list|expire`: silences from the command line (bridge.silences).

They are kept in the store, so a running `serve` (every replica) acts on them at once.
"""

from __future__ import annotations

import argparse
import getpass
import sys
import time
from pathlib import Path

from pydantic import ValidationError

from bridge.config import Config
from bridge.config_env import place
from bridge.durations import parse_duration
from bridge.logs import one_line
from bridge.silences import Silence, SilenceRequest
from bridge.store import open_store
from bridge.text import duration_text


class SilenceCommandError(Exception):
    """What the user asked for cannot be done: one line, exit 2."""


def add_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    about = "mute builds by factory and trigger globs, at a destination or all, for a time"
    silence = commands.add_parser("silence", help=about, description=about)
    actions = silence.add_subparsers(dest="action", required=True, metavar="ACTION")

    def action(name: str, help: str) -> argparse.ArgumentParser:
        parser = actions.add_parser(name, help=help, description=help)
        parser.add_argument("--config", required=True, type=Path, help="the TOML config file")
        return parser

    add = action("add", "add a silence; prints its id")
    add.add_argument("--factory", default="*", metavar="GLOB", help="factories (default: any)")
    add.add_argument("--trigger", default="*", metavar="GLOB", help="triggers (default: any)")
    add.add_argument("--destination", metavar="NAME", help="one destination (default: all)")
    add.add_argument("--for", dest="duration", required=True, type=_duration, metavar="DURATION")
    add.add_argument("--comment", required=True, help="why (shown wherever it is listed)")
    add.add_argument("--author", default=_user(), help="who (default: your user name)")
    listing = action("list", "list the active and pending silences")
    listing.add_argument("--all", action="store_true", help="the expired ones too")
    expire = action("expire", "end a silence now")
    expire.add_argument("id", type=int, metavar="ID")


async def run_silence(config: Config, args: argparse.Namespace) -> int:
    store = open_store(config.store)
    await store.open(serving=False)
    try:
        now = time.time()
        if args.action == "add":
            silence = await store.add_silence(_request(config, args).at(now), now)
            print(silence.id)
            print(f"silence {silence.id}: {one_line(silence.scope)}", file=sys.stderr)
        elif args.action == "list":
            shown = await store.silences(None if args.all else now)
            print(_table(shown, now))
        else:
            expired = await store.expire_silence(args.id, now)
            if expired is None:
                raise SilenceCommandError(f"no silence {args.id}")
            print(f"silence {expired.id} expired")
    finally:
        await store.close()
    return 0


def _request(config: Config, args: argparse.Namespace) -> SilenceRequest:
    asked = {
        "factory": args.factory,
        "trigger": args.trigger,
        "destination": args.destination,
        "for": args.duration,
        "comment": args.comment,
        "author": args.author,
    }
    try:
        request = SilenceRequest.model_validate(asked)
    except ValidationError as exc:
        error = exc.errors()[0]
        name = "for" if error["loc"] == ("for",) else place(error["loc"])
        message = str(error["msg"]).removeprefix("Value error, ")
        raise SilenceCommandError(f"--{name}: {message}") from None
    if request.destination is not None and request.destination not in config.destinations:
        raise SilenceCommandError(f'no destination named "{request.destination}"')
    return request


def _table(silences: list[Silence], now: float) -> str:
    lines = [
        f"{'ID':>4} {'STATE':8} {'ENDS IN':8} {'FACTORY':16} {'TRIGGER':20} {'DESTINATION':16}"
        f" {'AUTHOR':12} COMMENT"
    ]
    for silence in silences:
        state = silence.state(now)
        ends = duration_text(silence.ends_at - now) if state != "expired" else "-"
        lines.append(
            one_line(
                f"{silence.id:>4} {state:8} {ends:8} {silence.factory:16} {silence.trigger:20}"
                f" {silence.destination or '(all)':16} {silence.author:12} {silence.comment}"
            )
        )
    return "\n".join(lines)


def _duration(text: str) -> float:
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _user() -> str:
    try:
        return getpass.getuser()
    except (OSError, KeyError):
        return "cli"
