"""The jobserv-bridge command."""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import os
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from importlib import resources
from pathlib import Path

import aiohttp

from bridge import __version__
from bridge.config import Config, ConfigError, load_config
from bridge.durations import parse_duration
from bridge.failed_tests import FailedTestsFetcher, RunTests, http_url
from bridge.jobserv import SIGNATURE_HEADER, Build, NotABuild, parse_build, sign
from bridge.logs import one_line
from bridge.redact import Redactor
from bridge.rehearsal import template_problems
from bridge.render import TemplateError, context, render_message
from bridge.routing import explain, targets
from bridge.serve import serve
from bridge.silence_cli import SilenceCommandError, add_commands, run_silence
from bridge.store import State, Store, StoreUnavailable, open_store
from bridge.text import duration_text, plural
from bridge.transitions import Transition, history, transition

EXIT_FAILURE = 1
EXIT_USAGE = 2
# Commands that send and store nothing: an unset ${VAR} reads as a placeholder (check-config
# still names it as a problem, after checking everything else).
PREVIEWS = frozenset({"check-config", "render", "routes"})


class CommandError(Exception):
    """A problem with what the user asked for: printed as one line, exit 2."""


def _duration_argument(text: str) -> float:
    try:
        return parse_duration(text)
    except ValueError as exc:  # argparse shows only an ArgumentTypeError's own message
        raise argparse.ArgumentTypeError(str(exc)) from None


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
    serve.add_argument("--log-format", default="human", choices=["human", "json"])

    with_config("check-config", "validate a config: every problem, with its place")

    render = with_config("render", "print the exact bodies that would be posted, sending nothing")
    render.add_argument("--payload", required=True, type=Path, help="a JobServ webhook body")
    render.add_argument("--destination", help="render for this destination (default: routed)")
    render.add_argument(
        "--previous",
        type=_previous_argument,
        default=[],
        metavar="STATUS[,STATUS...]",
        help="how the builds before this one ended, newest first (e.g. FAILED,FAILED)",
    )

    routes = with_config("routes", "show which routes and destinations a build reaches, and why")
    routes.add_argument("--payload", required=True, type=Path, help="a JobServ webhook body")
    routes.add_argument(
        "--previous",
        type=_previous_argument,
        default=[],
        metavar="STATUS[,STATUS...]",
        help="how the builds before this one ended, newest first",
    )

    send_test = commands.add_parser(
        "send-test",
        help="sign a sample build and post it to a running bridge",
        description="sign a build (a failed sample by default) and post it to a running bridge,"
        " printing the answer",
    )
    send_test.add_argument("--url", required=True, help="the bridge's webhook URL")
    send_test.add_argument(
        "--secret-env", required=True, metavar="VAR", help="environment variable with the secret"
    )
    send_test.add_argument("--payload", type=Path, help="the body to send (default: a sample)")

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
    state.add_argument("--silenced", action="store_const", const="silenced", dest="state")
    listing.add_argument("--destination")
    listing.add_argument("--limit", type=int, default=100)
    retry = actions.add_parser("retry", help="queue dead letters again")
    which = retry.add_mutually_exclusive_group(required=True)
    which.add_argument("ids", nargs="*", type=int, default=[], metavar="ID")
    which.add_argument("--all-dead", action="store_true")
    purge = actions.add_parser("purge", help="delete sent and dead deliveries older than AGE")
    purge.add_argument("--older-than", required=True, type=_duration_argument, metavar="AGE")
    add_commands(commands)
    return parser


def _serve(config: Config, args: argparse.Namespace) -> int:
    return 0 if serve(config, args.log_level, args.log_format) else EXIT_FAILURE


def _read_build(path: Path) -> Build:
    try:
        return parse_build(path.read_bytes())
    except OSError as exc:
        raise CommandError(f"{path}: cannot read: {exc.strerror}") from None
    except NotABuild as exc:
        raise CommandError(f"{path}: {exc}") from None


def _transition(build: Build, previous: list[str]) -> Transition:
    """The build's transition, as if the builds before it ended as `previous` (newest first)."""
    earlier = [(build.build_id - 1 - i, status) for i, status in enumerate(previous)]
    return transition(build.build_id, build.status, history(earlier))


def _previous_argument(text: str) -> list[str]:
    statuses = [s.strip().upper() for s in text.split(",") if s.strip()]
    if not statuses:
        raise argparse.ArgumentTypeError("expected statuses such as FAILED or PASSED,FAILED")
    return statuses


def _routes(config: Config, args: argparse.Namespace) -> int:
    build = _read_build(args.payload)
    change = _transition(build, args.previous)
    print(
        f"build: factory {build.factory}, trigger {build.trigger_name or '(none)'},"
        f" #{build.build_id} {build.status} ({change.summary})"
    )
    for match in explain(config.routes, build, change):
        if match.matched:
            sends_to = ", ".join(config.routes[match.index].destinations)
            print(f"routes[{match.index}]: match: sends to {sends_to}")
        else:
            print(f"routes[{match.index}]: no match: {match.why}")
    found = targets(config.routes, build, change)
    names = [
        t.destination + (f" (mentions {' '.join(t.mentions)})" if t.mentions else "") for t in found
    ]
    print(f"destinations: {', '.join(names) if names else '(none)'}")
    return 0


def _check_url(url: str) -> None:
    if http_url(url) is None:
        raise CommandError(f"--url {url!r}: expected http(s)://HOST[:PORT]/webhook")


def _send_test(args: argparse.Namespace) -> int:
    _check_url(args.url)
    secret = os.environ.get(args.secret_env)
    if not secret:
        raise CommandError(f"environment variable {args.secret_env} is not set")
    try:
        if args.payload is not None:
            body = args.payload.read_bytes()
        else:
            body = resources.files("bridge").joinpath("samples", "failed-build.json").read_bytes()
    except OSError as exc:
        raise CommandError(f"{args.payload}: cannot read: {exc.strerror}") from None
    request = urllib.request.Request(
        args.url,
        data=body,
        method="POST",
        headers={"Content-Type": "application/json", SIGNATURE_HEADER: sign(secret, body)},
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            status, answer = response.status, response.read()
    except urllib.error.HTTPError as exc:
        status, answer = exc.code, exc.read()
    except (urllib.error.URLError, http.client.HTTPException, OSError) as exc:
        reason = getattr(exc, "reason", None) or f"{type(exc).__name__}: {exc}"
        reason = " ".join(str(reason).split())  # what a server sent may hold line breaks
        print(f"jobserv-bridge: cannot reach {args.url}: {reason}", file=sys.stderr)
        return EXIT_FAILURE
    print(status, answer.decode("utf-8", "replace"))
    return 0 if 200 <= status < 300 else EXIT_FAILURE


async def _failed_tests(config: Config, build: Build, most_runs: int) -> dict[str, RunTests]:
    """The failed tests a delivery would look up, so that the preview matches."""
    assert config.jobserv is not None
    async with aiohttp.ClientSession() as session:
        fetcher = FailedTestsFetcher(session)
        try:
            return await fetcher.for_build(build, config.jobserv, most_runs)
        finally:
            await fetcher.close()


def _render(config: Config, args: argparse.Namespace) -> int:
    build = _read_build(args.payload)
    change = _transition(build, args.previous)
    routed = {t.destination: t.mentions for t in targets(config.routes, build, change)}
    if args.destination is not None:
        if args.destination not in config.destinations:
            raise CommandError(f'no destination named "{args.destination}"')
        names = [args.destination]
    else:
        names = list(routed)
        if not names:
            print("no route sends this build anywhere", file=sys.stderr)
            return 0
    most_runs = max(config.destinations[name].max_failed_runs for name in names)
    tests = asyncio.run(_failed_tests(config, build, most_runs)) if config.jobserv else None
    for name in names:
        try:
            rendered = render_message(
                config.templates[name],
                config.destinations[name],
                context(
                    build,
                    event_id=0,
                    destination=name,
                    tests=tests,
                    change=change,
                    mentions=routed.get(name, ()),
                ),
            )
        except TemplateError as exc:
            raise CommandError(f"destination {name}: {exc}") from None
        if len(names) > 1:
            print(f"# {name} ({config.destinations[name].type})", file=sys.stderr, flush=True)
        if rendered.cut:
            left_out = plural(rendered.hidden, "failed run")
            print(f"# {left_out} left out to fit", file=sys.stderr, flush=True)
        body = rendered.posted
        text = body if isinstance(body, str) else json.dumps(body, indent=2, ensure_ascii=False)
        print(text, flush=True)
    return 0


def _check_config(config: Config, path: Path) -> int:
    """The config loaded (as a preview, so that its templates are checked even without the
    secrets); every unset variable is still a problem, and every template must render
    sample builds into messages its chat takes."""
    problems = [*config.unset, *template_problems(config)]
    for problem in problems:
        print(f"{path}: {problem}", file=sys.stderr)
    if problems:
        return EXIT_USAGE
    print(
        f"{path}: ok ({plural(len(config.sources), 'source')}, "
        f"{plural(len(config.destinations), 'destination')}, "
        f"{plural(len(config.routes), 'route')})"
    )
    return 0


async def _outbox(config: Config, args: argparse.Namespace) -> int:
    store: Store = open_store(config.store)
    await store.open(serving=False)
    try:
        now = time.time()
        if args.action == "list":
            state: State | None = args.state
            rows = await store.list_deliveries(state, args.destination, args.limit)
            print(f"{'ID':>6} {'STATE':7} {'DESTINATION':16} {'TRIES':>5} {'AGE':>5}  BUILD")
            # What a build or a chat chose is printed redacted (a secret configured since
            # it was kept) and on one line (no terminal escapes).
            redact = Redactor(config.secrets())
            for row in rows:
                build = f"{row.factory} {row.trigger} #{row.build_id} {row.status}"
                print(
                    f"{row.id:>6} {row.state:7} {row.destination:16} {row.attempts:>5} "
                    f"{duration_text(now - row.created_at):>6}  {one_line(redact(build))}"
                )
                if row.last_error and row.state != "sent":
                    print(f"{'':>6} last error: {one_line(redact(row.last_error))}")
            counts = await store.counts()
            print(", ".join(f"{n} {s}" for s, n in counts.items()), file=sys.stderr)
        elif args.action == "retry":
            count = await store.requeue_dead(None if args.all_dead else args.ids, now)
            if count:  # replicas on PostgreSQL send them at once; `serve` on SQLite polls
                store.announce_queued(sorted(config.destinations))
            print(f"{plural(count, 'dead letter')} queued again")
        else:
            count = await store.purge(now - args.older_than, ("sent", "dead", "silenced"))
            print(f"{plural(count, 'delivery', 'deliveries')} purged")
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
    if args.command == "send-test":
        try:
            return _send_test(args)
        except CommandError as exc:
            print(f"jobserv-bridge: {exc}", file=sys.stderr)
            return EXIT_USAGE
    try:
        config = load_config(args.config, preview=args.command in PREVIEWS)
    except ConfigError as exc:
        for problem in exc.problems:
            # Problems with the file as a whole already start with its name.
            if not problem.startswith(f"{args.config}: "):
                problem = f"{args.config}: {problem}"
            print(problem, file=sys.stderr)
        return EXIT_USAGE
    try:
        if args.command == "check-config":
            return _check_config(config, args.config)
        if args.command == "render":
            return _render(config, args)
        if args.command == "routes":
            return _routes(config, args)
        if args.command == "outbox":
            return asyncio.run(_outbox(config, args))
        if args.command == "silence":
            return asyncio.run(run_silence(config, args))
        return _serve(config, args)
    except (CommandError, SilenceCommandError) as exc:
        print(f"jobserv-bridge: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except StoreUnavailable as exc:
        print(f"jobserv-bridge: {Redactor(config.secrets())(str(exc))}", file=sys.stderr)
        return EXIT_FAILURE
