"""Intake under arbitrary input: never a 5xx, and nothing is stored unless validly signed.

Each test runs one real app (real SQLite file) in its own event loop and sends every
Hypothesis example to it, so the store accumulates across examples: each example
checks what its own request changed.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import itertools
import json
import re
import sqlite3
import time
from collections.abc import Collection, Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bridge.jobserv import sign
from bridge.server import RUNTIME, create_app
from tests.conftest import FAILED, PASSED, SECRET, fixture_body, make_config

OTHER_SECRET = "a-secret-the-bridge-does-not-know"
MAX_BODY = 4096

CONFIG = f"""
[server]
max_body_size = {MAX_BODY}

[store]
path = "bridge.sqlite3"

# The status page has its own listener; these tests do not need it.
[admin]
enabled = false

[delivery]
poll_interval = "0.05s"

[[sources]]
name = "docs"
secret = "{SECRET}"
factories = ["andy-corp", "lmp"]

[[destinations]]
name = "log"
type = "console"

[[routes]]
notify = ["failed", "passed"]
destinations = ["log"]
"""

# Enough examples to explore, few enough to keep the whole file within seconds.
FEW = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
MANY = settings(FEW, max_examples=300)

_SIGNATURE = re.compile(r"sha256:[ \t]*([0-9a-fA-F]{64})")


@dataclass(frozen=True)
class Stored:
    events: int
    deliveries: int


@dataclass(frozen=True)
class Answer:
    status: int
    json: Any


class Intake:
    """A running bridge: send a request, see what the store holds."""

    def __init__(
        self,
        runner: asyncio.Runner,
        client: TestClient[web.Request, web.Application],
        database: sqlite3.Connection,
    ) -> None:
        self.runner = runner
        self.client = client
        self.database = database  # a reader beside the app's own writer

    def post(self, body: bytes, headers: dict[str, str]) -> Answer:
        async def send() -> Answer:
            async with self.client.post("/webhook", data=body, headers=headers) as response:
                assert response.status < 500, (response, await response.text())
                assert response.content_type == "application/json", response
                return Answer(response.status, await response.json())

        answer = self.runner.run(send())
        if answer.status >= 400:
            error = answer.json["error"]
            assert isinstance(error, str)
            assert error.strip()
            assert "\n" not in error
        return answer

    def stored(self) -> Stored:
        (events,) = self.database.execute("SELECT count(*) FROM events").fetchone()
        counts = self.runner.run(self.client.app[RUNTIME].store.counts())
        return Stored(events, sum(counts.values()))

    def check(
        self,
        body: bytes,
        headers: dict[str, str],
        validly_signed: bool,
        expected: Collection[int] = (),
    ) -> Answer:
        """Send; check the answer against the store, and the store against the signature.

        `expected`: the answers a validly signed body may get, by what the example put in
        it (202 stands for 200 too: a repeat of an event is answered 200); a body over the
        limit is always 413.
        """
        before = self.stored()
        answer = self.post(body, headers)
        after = self.stored()
        if answer.status == 202:
            assert validly_signed
            assert after == Stored(before.events + 1, before.deliveries + answer.json["deliveries"])
        else:
            assert after == before, answer
        if len(body) > MAX_BODY:
            assert answer.status == 413, answer
        elif not validly_signed:
            assert answer.status == 401, answer
        else:
            allowed = set(expected) | ({200} if 202 in expected else set())
            assert answer.status in allowed, (answer, sorted(allowed))
        return answer

    def all_delivered(self) -> None:
        """Every delivery of every accepted event ends, sent or dead (a bounded wait).

        The bridge's loop runs only inside the runner: it runs while this waits, so that the
        lanes send and their outcomes (written after a short gathering) reach the store.
        """
        deadline = time.monotonic() + 30.0
        while self.pending():
            assert time.monotonic() < deadline, f"{self.pending()} deliveries still pending"
            self.runner.run(asyncio.sleep(0.05))

    def pending(self) -> int:
        (count,) = self.database.execute(
            "SELECT count(*) FROM deliveries WHERE state = 'pending'"
        ).fetchone()
        return int(count)


@contextmanager
def running_bridge(folder: Path) -> Iterator[Intake]:
    config = make_config(folder, CONFIG)
    with asyncio.Runner() as runner:

        async def start() -> TestClient[web.Request, web.Application]:
            client = TestClient(TestServer(create_app(config)))
            await client.start_server()
            return client

        client = runner.run(start())
        try:
            with closing(sqlite3.connect(config.store.path)) as database:
                yield Intake(runner, client, database)
        finally:
            runner.run(client.close())


def expected_digest(body: bytes, secret: str = SECRET) -> str:
    return hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def is_valid_signature(header: str | None, body: bytes) -> bool:
    """The contract: `sha256:`, optional whitespace, the 64 hex digits in any case."""
    if header is None:
        return False
    match = _SIGNATURE.fullmatch(header.strip(" \t"))
    return match is not None and match.group(1).lower() == expected_digest(body)


# -- strategies -----------------------------------------------------------------------------

header_text = st.text(
    alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=100
).map(str.strip)
hex_digest = st.text(alphabet="0123456789abcdefABCDEF", min_size=64, max_size=64)
random_signature = st.one_of(
    header_text,
    hex_digest.map(lambda h: f"sha256:{h}"),
    st.tuples(st.sampled_from(["sha256:", "sha256: ", "sha1:", "SHA256:", ""]), hex_digest).map(
        "".join
    ),
)
header_name = st.text(alphabet="abcdefghijklmnopqrstuvwxyz-", min_size=1, max_size=20).filter(
    lambda name: name.strip("-") and name.lower() not in ("content-length", "transfer-encoding")
)
extra_headers = st.dictionaries(header_name, header_text, max_size=3)

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=30),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=20,
)
# Builds much like JobServ's: any text where text goes, and a few odd values JSON allows.
valid_timestamps = st.datetimes(
    min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(UTC)
).map(datetime.isoformat)
# Mostly factories the source may report ("andy-corp", "lmp"), so that many builds get
# through; "zeta" it may not; any text may make any factory, or none.
ALLOWED_FACTORIES = ["andy-corp/lmp", "lmp"]
factories = st.one_of(
    st.sampled_from(ALLOWED_FACTORIES), st.just("zeta/lmp") | st.text(max_size=12)
)
valid_urls = st.builds(
    "https://api.foundries.io/projects/{}/builds/{}/".format,
    factories,
    st.integers(min_value=1, max_value=10**6),
)
REAL_HOSTS = ["api.foundries.io", "ci.foundries.io"]
# Mostly the real host; sometimes one that URL parsers choke on ("[", ":", "@").
hosts = st.one_of(st.sampled_from(REAL_HOSTS), st.text(alphabet="[]:@.a1", max_size=8))
statuses = st.sampled_from(["PASSED", "FAILED", "RUNNING", "SKIPPED"]) | st.text(max_size=10)
valid_runs = st.fixed_dictionaries(
    {"name": st.text(max_size=20), "url": valid_urls, "status": statuses, "log_url": valid_urls},
    optional={
        "web_url": valid_urls,
        "created": valid_timestamps,
        "completed": valid_timestamps,
        "host_tag": st.text(max_size=10),
        "tests": valid_urls,
    },
)
SQLITE_INTEGERS = range(-(2**63), 2**63)
valid_builds = st.fixed_dictionaries(
    {
        # Mostly what SQLite can hold, sometimes any integer at all.
        "build_id": st.integers(min_value=1, max_value=2**63 - 1) | st.integers(),
        "status": statuses,
        "runs": st.lists(valid_runs, max_size=3),
    },
    optional={
        "web_url": st.builds(
            "https://{}/projects/{}/builds/{}/".format,
            hosts,
            factories,
            st.integers(min_value=1, max_value=10**6),
        ),
        "name": st.text(max_size=20),
        "trigger_name": st.text(max_size=30),
        "created": valid_timestamps,
        "completed": valid_timestamps,
        "status_events": st.lists(
            st.fixed_dictionaries({"time": valid_timestamps, "status": statuses}), max_size=3
        ),
        "runs_url": valid_urls,
        "reason": st.none() | st.text(max_size=200),
        "annotation": json_values,
        "some_future_key": json_values,
    },
)
# What a broken sender might put in any field instead.
odd_values = (
    json_values
    | st.sampled_from([2**63, -(2**63) - 1, 10**40, "", "http://[::1", "/projects/", 1e308])
    | st.text(max_size=40)
)
BUILD_KEYS = ["build_id", "url", "status", "runs", "web_url", "created", "completed", "reason"]
BUILD_KEYS += ["trigger_name", "status_events", "runs_url"]
RUN_KEYS = ["name", "url", "status", "log_url", "web_url", "created", "completed", "tests"]


@dataclass(frozen=True)
class Generated:
    build: dict[str, Any]
    expected: frozenset[int]  # the answers what the generator put in allows


@st.composite
def builds(draw: st.DrawFn) -> Generated:
    """A valid build, or one with a few fields removed or given odd values; with the
    answers that allows: a refusal only for a reason the generator put there."""
    build = draw(valid_builds)
    host, factory = draw(hosts), draw(factories)
    build["url"] = f"https://{host}/projects/{factory}/builds/{build['build_id']}/"
    if host not in REAL_HOSTS or factory not in [*ALLOWED_FACTORIES, "zeta/lmp"]:
        expected = {202, 400, 403}  # the factory is any, or none (perhaps from web_url)
    else:
        expected = {202} if factory in ALLOWED_FACTORIES else {403}
    if build["build_id"] not in SQLITE_INTEGERS:
        expected = {400}  # not a build, whoever it is from
    for _ in range(draw(st.integers(min_value=0, max_value=2))):
        target = build
        # Runs as generated, or what an earlier pass put in their place (any JSON).
        runs = build.get("runs")
        runs = [run for run in runs if isinstance(run, dict)] if isinstance(runs, list) else []
        if runs and draw(st.booleans()):
            target = draw(st.sampled_from(runs))
            key = draw(st.sampled_from(RUN_KEYS))
        else:
            key = draw(st.sampled_from(BUILD_KEYS))
        if draw(st.booleans()):
            target.pop(key, None)
        else:
            target[key] = draw(odd_values)
        expected.add(400)
        if target is build and key in ("url", "web_url"):
            expected |= {202, 403}  # another factory, or none
    return Generated(build, frozenset(expected))


@st.composite
def mutated(draw: st.DrawFn, body: bytes) -> bytes:
    """A valid body changed a little: letters swapped, bytes replaced, removed, inserted, cut."""
    data = bytearray(body)
    for _ in range(draw(st.sampled_from([1, 1, 1, 2, 3]))):
        at = draw(st.integers(min_value=0, max_value=len(data)))
        kind = draw(
            st.sampled_from(["letter", "letter", "replace", "delete", "insert", "truncate"])
        )
        letters = [i for i, byte in enumerate(data) if chr(byte).isalpha()]
        if kind == "letter" and letters:
            # Mostly inside strings: still JSON, now perhaps another factory, status or event.
            at = draw(st.sampled_from(letters))
            data[at] = ord(draw(st.sampled_from("abcdefghijklmnopqrstuvwxyzABDEFLPS")))
        elif kind == "replace" and at < len(data):
            data[at] = draw(st.integers(min_value=0, max_value=255))
        elif kind == "delete":
            del data[at : at + draw(st.integers(min_value=1, max_value=40))]
        elif kind == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=20) | st.sampled_from(SNIPPETS))
        elif kind == "truncate":
            del data[at:]
    return bytes(data)


SNIPPETS = [b"null", b"[", b"]", b"{", b"}", b",", b'"', b"\\u0000", b"\\ud800", b"1e999", b"-"]


# -- properties ------------------------------------------------------------------------------


def test_random_bytes_and_headers(tmp_path: Path) -> None:
    with running_bridge(tmp_path) as intake:

        @MANY
        @given(
            body=st.binary(max_size=MAX_BODY + 200),
            signature=st.none() | random_signature,
            sign_it=st.booleans(),
            extra=extra_headers,
        )
        def check(body: bytes, signature: str | None, sign_it: bool, extra: dict[str, str]) -> None:
            header = sign(SECRET, body) if sign_it else signature
            headers = {**extra, **({"X-JobServ-Sig": header} if header is not None else {})}
            # Random bytes are no build (they are not even a JSON object).
            intake.check(body, headers, is_valid_signature(header, body), expected={400})

        check()


def test_random_json_signed_or_not(tmp_path: Path) -> None:
    with running_bridge(tmp_path) as intake:

        @FEW
        @given(value=json_values, secret=st.sampled_from([SECRET, OTHER_SECRET, None]))
        def check(value: Any, secret: str | None) -> None:
            body = json.dumps(value).encode()
            headers = {"Content-Type": "application/json"}
            if secret is not None:
                headers["X-JobServ-Sig"] = sign(secret, body)
            # No JSON value of these has a build's keys.
            intake.check(body, headers, validly_signed=secret == SECRET, expected={400})

        check()


def test_build_shaped_json_signed(tmp_path: Path) -> None:
    with running_bridge(tmp_path) as intake:
        seen_events: set[int] = set()

        @MANY
        @given(generated=builds(), ascii_only=st.booleans())
        def check(generated: Generated, ascii_only: bool) -> None:
            body = json.dumps(generated.build, ensure_ascii=ascii_only).encode()
            headers = {"Content-Type": "application/json", "X-JobServ-Sig": sign(SECRET, body)}
            answer = intake.check(body, headers, True, generated.expected)
            if answer.status == 202:
                assert answer.json["event_id"] not in seen_events
                seen_events.add(answer.json["event_id"])
            elif answer.status == 200:
                assert answer.json["event_id"] in seen_events

        check()
        assert seen_events  # many of the builds were accepted ...
        intake.all_delivered()  # ... and each was delivered, or failed for good


def test_mutated_valid_bodies(tmp_path: Path) -> None:
    originals = {name: fixture_body(name) for name in (FAILED, PASSED)}
    with running_bridge(tmp_path) as intake:

        @FEW
        @given(data=st.data(), name=st.sampled_from(sorted(originals)), resign=st.booleans())
        def check(data: st.DataObject, name: str, resign: bool) -> None:
            original = originals[name]
            body = data.draw(mutated(original))
            header = sign(SECRET, body) if resign else sign(SECRET, original)
            validly_signed = resign or body == original
            # A changed letter may make another factory (403), status or event (202).
            expected = {202} if body == original else {202, 400, 403}
            intake.check(body, {"X-JobServ-Sig": header}, validly_signed, expected)

        check()
        intake.all_delivered()


def test_random_signature_headers_on_a_valid_build(tmp_path: Path) -> None:
    fresh = itertools.count()
    with running_bridge(tmp_path) as intake:

        @MANY
        @given(
            mangle=st.sampled_from(["none", "upper", "spaces", "flip", "cut", "random"]),
            spaces=st.text(alphabet=" ", min_size=1, max_size=3),
            position=st.integers(min_value=0, max_value=63),
            noise=random_signature,
        )
        def check(mangle: str, spaces: str, position: int, noise: str) -> None:
            # A new completion time each example: a new event, unless the signature is refused.
            data = json.loads(fixture_body(FAILED))
            data["completed"] = datetime.fromtimestamp(next(fresh), UTC).isoformat()
            body = json.dumps(data).encode()
            digest = expected_digest(body)
            header = {
                "none": f"sha256:{digest}",
                "upper": f"sha256:{digest.upper()}",
                "spaces": f"sha256:{spaces}{digest}",
                "flip": f"sha256:{digest[:position]}{'0' if digest[position] != '0' else '1'}"
                f"{digest[position + 1 :]}",
                "cut": f"sha256:{digest[:position]}",
                "random": noise,
            }[mangle]
            valid = is_valid_signature(header, body)
            assert valid == (mangle in ("none", "upper", "spaces"))

            answer = intake.check(body, {"X-JobServ-Sig": header}, valid, expected={202})

            assert answer.status == (202 if valid else 401), answer

        check()
