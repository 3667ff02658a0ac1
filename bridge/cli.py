"""The jobserv-bridge command."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from aiohttp import web

from bridge import __version__
from bridge.config import Config, ConfigError, load_config
from bridge.durations import parse_duration
from bridge.jobserv import NotABuild, parse_build, sign
from bridge.redact import Redactor, install
from bridge.render import TemplateError, context
from bridge.routing import destinations_for
from bridge.store import State, Store, StoreUnavailable, open_store

EXIT_FAILURE = 1
EXIT_USAGE = 2


class CommandError(Exception):
    """A problem with what the user asked for: printed as one line, exit 2."""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="jobserv-bridge",
        description="Foundries.io JobServ build webhooks to Slack and other chats.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def with_config(name: str, help: str) -> argparse.ArgumentParser:
        command = commands.add_parser(name, help=help, description=help)
        command.add_argument("--config", required=True, type=Path, help="the TOML config file")
        return command

    serve = with_config("serve", "receive webhooks and deliver messages until SIGTERM/SIGINT")
    serve.add_argument("--log-level", default="info", choices=["debug", "info", "warning"])

    with_config("check-config", "validate a config: every problem, with its place")

    render = with_config("render", "print the exact bodies that would be posted, sending nothing")
    render.add_argument("--payload", required=True, type=Path, help="a JobServ webhook body")
    render.add_argument("--destination", help="render for this destination (default: routed)")

    sign_command = commands.add_parser(
        "sign",
        help="print the X-JobServ-Sig value of a body",
        description="print the X-JobServ-Sig header value JobServ would send with this body",
    )
    sign_command.add_argument("--secret", required=True, help="the webhook secret")
    sign_command.add_argument("file", type=Path, help="the body, sent byte for byte")

    outbox = with_config("outbox", "inspect and replay stored deliveries")
    actions = outbox.add_subparsers(dest="action", required=True, metavar="ACTION")
    listing = actions.add_parser("list", help="list deliveries, newest first")
    state = listing.add_mutually_exclusive_group()
    state.add_argument("--dead", action="store_const", const="dead", dest="state")
    state.add_argument("--pending", action="store_const", const="pending", dest="state")
    state.add_argument("--sent", action="store_const", const="sent", dest="state")
    listing.add_argument("--destination")
    listing.add_argument("--limit", type=int, default=100)
    retry = actions.add_parser("retry", help="queue dead letters again")
    which = retry.add_mutually_exclusive_group(required=True)
    which.add_argument("ids", nargs="*", type=int, default=[], metavar="ID")
    which.add_argument("--all-dead", action="store_true")
    purge = actions.add_parser("purge", help="delete sent and dead deliveries older than AGE")
    purge.add_argument("--older-than", required=True, type=parse_duration, metavar="AGE")
    return parser


def _configure_logging(level: str, config: Config) -> None:
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    install(Redactor(config.secrets()))


def _serve(config: Config, args: argparse.Namespace) -> int:
    from bridge.server import create_app

    _configure_logging(args.log_level, config)
    log = logging.getLogger("bridge")
    host, port = config.server.host, config.server.port
    log.info("jobserv-bridge %s listening on http://%s:%d/webhook", __version__, host, port)
    web.run_app(
        create_app(config),
        host=host,
        port=port,
        shutdown_timeout=config.server.shutdown_timeout,
        print=None,
        access_log=None,
    )
    log.info("stopped")
    return 0


def _render(config: Config, args: argparse.Namespace) -> int:
    try:
        build = parse_build(args.payload.read_bytes())
    except OSError as exc:
        raise CommandError(f"{args.payload}: cannot read: {exc.strerror}") from None
    except NotABuild as exc:
        raise CommandError(f"{args.payload}: {exc}") from None
    if args.destination is not None:
        if args.destination not in config.destinations:
            raise CommandError(f'no destination named "{args.destination}"')
        names = [args.destination]
    else:
        names = destinations_for(config.routes, build)
        if not names:
            print("no route sends this build anywhere", file=sys.stderr)
            return 0
    for name in names:
        try:
            body = config.templates[name].render(context(build, event_id=0, destination=name))
        except TemplateError as exc:
            raise CommandError(f"destination {name}: {exc}") from None
        if len(names) > 1:
            print(f"# {name} ({config.destinations[name].type})", file=sys.stderr)
        print(body if isinstance(body, str) else json.dumps(body, indent=2, ensure_ascii=False))
    return 0


def _age(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f}{unit}"
    return f"{seconds:.0f}s"


async def _outbox(config: Config, args: argparse.Namespace) -> int:
    store: Store = open_store(str(config.store.path))
    await store.open(serving=False)
    try:
        now = time.time()
        if args.action == "list":
            state: State | None = args.state
            rows = await store.list_deliveries(state, args.destination, args.limit)
            print(f"{'ID':>6} {'STATE':7} {'DESTINATION':16} {'TRIES':>5} {'AGE':>5}  BUILD")
            for row in rows:
                build = f"{row.factory} {row.trigger} #{row.build_id} {row.status}"
                print(
                    f"{row.id:>6} {row.state:7} {row.destination:16} {row.attempts:>5} "
                    f"{_age(now - row.created_at):>5}  {build}"
                )
                if row.last_error and row.state != "sent":
                    print(f"{'':>6} last error: {row.last_error}")
            counts = await store.counts()
            print(", ".join(f"{n} {s}" for s, n in counts.items()), file=sys.stderr)
        elif args.action == "retry":
            count = await store.retry(None if args.all_dead else args.ids, now)
            print(f"{count} dead letters queued again")
        else:
            count = await store.purge(now - args.older_than, ("sent", "dead"))
            print(f"{count} deliveries purged")
    finally:
        await store.close()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "sign":
        try:
            print(sign(args.secret, args.file.read_bytes()))
        except OSError as exc:
            print(f"jobserv-bridge: {args.file}: cannot read: {exc.strerror}", file=sys.stderr)
            return EXIT_USAGE
        return 0
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"{args.config}: {problem}", file=sys.stderr)
        return EXIT_USAGE
    try:
        if args.command == "check-config":
            print(
                f"{args.config}: ok ({len(config.sources)} sources, "
                f"{len(config.destinations)} destinations, {len(config.routes)} routes)"
            )
            return 0
        if args.command == "render":
            return _render(config, args)
        if args.command == "outbox":
            return asyncio.run(_outbox(config, args))
        return _serve(config, args)
    except CommandError as exc:
        print(f"jobserv-bridge: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except StoreUnavailable as exc:
        print(f"jobserv-bridge: {Redactor(config.secrets())(str(exc))}", file=sys.stderr)
        return EXIT_FAILURE
