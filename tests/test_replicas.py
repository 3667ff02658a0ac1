"""Several `python -m bridge serve` replicas sharing one PostgreSQL store.

The replicas are real processes on one fresh database (tests/postgres.py); the
fake chat runs in the test process, so what it received survives a replica's
death. Each event is the failed fixture with its own build_id, url and completed
time; the generic template writes `build_id` into every message.
"""

from __future__ import annotations

import asyncio
import json
import signal
import textwrap
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import asyncpg
import pytest

from bridge.config import ConfigError, parse_config
from bridge.store import NewEvent, open_store
from bridge.store.postgres import LANE_LOCK_CLASS, PostgresStore
from tests.conftest import SECRET, plan, signed_headers
from tests.fakes.chat_server import FakeChat, RecordedRequest
from tests.postgres import fresh_database
from tests.serve import (
    event_body,
    free_port,
    resent_after_a_crash,
    run_cli,
    spawn_serve,
    wait_healthy,
)

EVENTS = 300
RATE_LIMIT = 20.0  # messages a second, per destination, with a burst of 1
DESTINATIONS = ("alerts", "audit")


@pytest.fixture
async def postgres_url() -> AsyncIterator[str]:
    async with fresh_database() as url:
        yield url


def replica_config(folder: Path, port: int, chat: FakeChat, poll_interval: str = "0.1s") -> Path:
    """One replica's config: the store URL comes from the environment, as in production."""
    destinations = "".join(
        f"""
        [[destinations]]
        name = "{name}"
        type = "generic"
        url = "{chat.url("/" + name)}"
        timeout = "2s"
        rate_limit = {RATE_LIMIT}
        burst = 1
        """
        for name in DESTINATIONS
    )
    text = f"""
        [server]
        host = "127.0.0.1"
        port = {port}
        shutdown_timeout = "3s"

        [store]
        url = "${{BRIDGE_STORE_URL}}"
        pool_size = 4

        [delivery]
        retry_initial = "0.05s"
        retry_max = "0.2s"
        poll_interval = "{poll_interval}"

        [admin]
        enabled = false

        [[sources]]
        name = "docs-example"
        secret = "{SECRET}"
        factories = ["*"]
        {destinations}
        [[routes]]
        notify = ["failed", "passed"]
        destinations = {json.dumps(list(DESTINATIONS))}
        """
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "config.toml"
    path.write_text(textwrap.dedent(text))
    return path


class Replica:
    """One `python -m bridge serve` process."""

    def __init__(
        self, folder: Path, chat: FakeChat, store_url: str, poll_interval: str = "0.1s"
    ) -> None:
        self.folder = folder
        self.port = free_port()
        self.config = replica_config(folder, self.port, chat, poll_interval)
        self.store_url = store_url
        self.process: asyncio.subprocess.Process | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def log(self) -> str:
        return (self.folder / "stderr.txt").read_text(errors="replace")

    async def start(self) -> None:
        with (self.folder / "stderr.txt").open("wb") as stderr:
            self.process = await spawn_serve(
                self.config,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=stderr,
                environment={"BRIDGE_STORE_URL": self.store_url},
            )

    async def wait_serving(self, session: aiohttp.ClientSession, deadline: float) -> None:
        assert self.process is not None
        await wait_healthy(self.process, session, self.url, deadline, self.log)

    def kill(self) -> None:
        assert self.process is not None
        self.process.kill()

    async def stop(self) -> int:
        """SIGTERM, and the exit code."""
        assert self.process is not None
        if self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return await asyncio.wait_for(self.process.wait(), 15)
        except TimeoutError:
            self.process.kill()
            return await self.process.wait()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    # A fresh connection per request: a killed replica leaves no stale one behind.
    connector = aiohttp.TCPConnector(force_close=True)
    async with aiohttp.ClientSession(
        connector=connector, timeout=aiohttp.ClientTimeout(total=10)
    ) as client:
        yield client


async def wait_owned(store_url: str, destination: str, pid: int, within: float = 10.0) -> None:
    """Wait until the replica `pid` holds `destination`'s lane: a replica answers once it
    serves, and its lanes take their locks in the moments after."""
    deadline = time.monotonic() + within
    while (owner := await lane_owner(store_url, destination)) != pid:
        assert time.monotonic() < deadline, f"lane {destination} owned by {owner}, not {pid}"
        await asyncio.sleep(0.05)


async def lane_owner(store_url: str, destination: str) -> int | None:
    """The pid of the replica whose lanes' connection holds `destination`'s lock."""
    connection = await asyncpg.connect(store_url)
    try:
        name = await connection.fetchval(
            "SELECT a.application_name FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid"
            " WHERE l.locktype = 'advisory' AND l.granted AND l.classid = $1"
            " AND l.objid = hashtext($2)::oid"
            " AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())",
            LANE_LOCK_CLASS,
            destination,
        )
    finally:
        await connection.close()
    # "jobserv-bridge lanes <pid>@<host>"
    return None if name is None else int(str(name).split()[2].split("@")[0])


async def post_event(
    session: aiohttp.ClientSession, replicas: list[Replica], first: int, body: bytes
) -> int:
    """POST to replicas[first], or, when it does not answer, to the next ones (the retry
    a load balancer or JobServ makes); the status of the answer."""
    for index in range(first, first + len(replicas)):
        replica = replicas[index % len(replicas)]
        try:
            async with session.post(
                replica.url + "/webhook", data=body, headers=signed_headers(body)
            ) as response:
                return response.status
        except (aiohttp.ClientError, TimeoutError):
            continue
    raise AssertionError("no replica answered")


def rate_violations(arrivals: list[float], rate: float, burst: int, slack: float) -> list[str]:
    """Pairs of arrivals closer than the token bucket allows: n messages after the first
    need (n - burst) / rate seconds; `slack` allows for network and scheduling jitter."""
    found = []
    for i, start in enumerate(arrivals):
        for j in range(i + burst + 1, len(arrivals)):
            needed = (j - i - burst) / rate - slack
            if arrivals[j] - start < needed:
                found.append(f"messages {i}..{j}: {arrivals[j] - start:.3f}s < {needed:.3f}s")
    return found


KILL_GRACE = 0.5  # seconds: a send of a process being killed may reach the chat after the kill


async def test_three_replicas_deliver_each_event_once_through_a_kill(
    tmp_path: Path, fake_chat: FakeChat, postgres_url: str, session: aiohttp.ClientSession
) -> None:
    replicas = [Replica(tmp_path / f"replica-{i}", fake_chat, postgres_url) for i in range(3)]
    await asyncio.gather(*(r.start() for r in replicas))
    try:
        deadline = time.monotonic() + 20
        await asyncio.gather(*(r.wait_serving(session, deadline) for r in replicas))

        # Events one after another, spread over the replicas; every third one is also
        # sent, at the same moment, to another replica. Half-way, the replica that
        # owns the "alerts" lane is killed; what was meant for it goes to the next one.
        statuses: dict[int, list[int]] = {}
        killed: Replica | None = None
        killed_at = 0.0
        for n in range(EVENTS):
            if n == EVENTS // 2:
                owner = await lane_owner(postgres_url, "alerts")
                [killed] = [r for r in replicas if r.pid == owner]
                killed.kill()
                killed_at = time.monotonic()
            body = event_body(n)
            sends = [post_event(session, replicas, n, body)]
            if n % 3 == 0:
                sends.append(post_event(session, replicas, n + 1, body))
            statuses[n] = list(await asyncio.gather(*sends))
        assert killed is not None

        # Stored once (202), a repeat recognised (200); after the kill, a 202 may have
        # been lost with the replica, and the retry elsewhere is then a repeat.
        assert all(set(s) <= {200, 202} and s.count(202) <= 1 for s in statuses.values())
        assert all(s.count(202) == 1 for n, s in statuses.items() if n < EVENTS // 2)

        store = PostgresStore(postgres_url)
        await store.open(serving=False)
        try:
            deadline = time.monotonic() + 45
            while (counts := await store.counts())["pending"]:
                assert time.monotonic() < deadline, f"still pending: {counts}"
                await asyncio.sleep(0.2)
            assert counts == {"pending": 0, "sent": 2 * EVENTS, "dead": 0}
            assert len(await store.recent_events(2 * EVENTS)) == EVENTS
        finally:
            await store.close()

        for name in DESTINATIONS:
            received = fake_chat.requests_to("/" + name)
            builds = [r.json["build_id"] for r in received]
            # Exactly once, but for the sends of the killed owner whose outcome was not
            # written yet (the one in flight, and a few just before): resent first, in order
            # (each event was accepted before the next one was sent).
            assert set(builds) == set(range(EVENTS)), name
            for build in resent_after_a_crash(builds):
                first = next(r for r in received if r.json["build_id"] == build)
                # Sent by the owner before it died (a killed process may still be writing
                # for a moment after the signal), not by another replica later.
                assert first.received_at < killed_at + KILL_GRACE, f"{name}: {build} resent"
            # The rate limit holds across replicas, and across the takeover.
            arrivals = [r.received_at for r in received]
            assert rate_violations(arrivals, RATE_LIMIT, 1, slack=0.1) == [], name
        assert "taken over from another replica" in "".join(r.log() for r in replicas)

        survivors = [r for r in replicas if r is not killed]
        assert [await r.stop() for r in survivors] == [0, 0]
    finally:
        for replica in replicas:
            if replica.process is not None and replica.process.returncode is None:
                replica.kill()
                await replica.process.wait()


def _received_builds(requests: list[RecordedRequest]) -> list[int]:
    return [int(r.json["build_id"]) for r in requests]


async def test_a_replica_that_stops_hands_its_lanes_over(
    tmp_path: Path, fake_chat: FakeChat, postgres_url: str, session: aiohttp.ClientSession
) -> None:
    first, second = (Replica(tmp_path / f"replica-{i}", fake_chat, postgres_url) for i in (1, 2))
    await first.start()
    try:
        await first.wait_serving(session, time.monotonic() + 20)
        await wait_owned(postgres_url, "alerts", first.pid)
        await second.start()
        await second.wait_serving(session, time.monotonic() + 20)
        assert await lane_owner(postgres_url, "alerts") == first.pid

        assert await first.stop() == 0
        assert await post_event(session, [second], 0, event_body(1)) == 202

        received = await fake_chat.wait_for(1, timeout=10, path="/alerts")
        assert _received_builds(received) == [1]
        assert await lane_owner(postgres_url, "alerts") == second.pid
    finally:
        for replica in (first, second):
            if replica.process is not None and replica.process.returncode is None:
                await replica.stop()


async def test_a_webhook_taken_by_a_replica_without_the_lane_wakes_its_owner(
    tmp_path: Path, fake_chat: FakeChat, postgres_url: str, session: aiohttp.ClientSession
) -> None:
    """The lanes poll every 30 s here: only the owner being told sends within seconds."""
    owner, other = (
        Replica(tmp_path / f"replica-{i}", fake_chat, postgres_url, poll_interval="30s")
        for i in (1, 2)
    )
    await owner.start()
    try:
        await owner.wait_serving(session, time.monotonic() + 20)
        for name in DESTINATIONS:
            await wait_owned(postgres_url, name, owner.pid)
        await other.start()
        await other.wait_serving(session, time.monotonic() + 20)

        for build in (1, 2):  # the owner's lanes asleep since their first claim, then since 1
            assert await post_event(session, [other], 0, event_body(build)) == 202
            for name in DESTINATIONS:
                received = await fake_chat.wait_for(build, timeout=10, path=f"/{name}")
                assert _received_builds(received) == list(range(1, build + 1))
        for name in DESTINATIONS:
            assert await lane_owner(postgres_url, name) == owner.pid
    finally:
        for replica in (owner, other):
            if replica.process is not None and replica.process.returncode is None:
                await replica.stop()


async def test_outbox_retry_wakes_the_replica_that_owns_the_lane(
    tmp_path: Path,
    fake_chat: FakeChat,
    postgres_url: str,
    session: aiohttp.ClientSession,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The command runs in a process of its own; the lanes poll every 30 s here."""
    owner = Replica(tmp_path / "replica", fake_chat, postgres_url, poll_interval="30s")
    monkeypatch.setenv("BRIDGE_STORE_URL", postgres_url)
    store = open_store(parse_config(owner.config.read_text(), owner.config).store)
    await store.open(serving=False)
    try:
        await store.accept(_new_event(7), plan(["alerts"]))
        [row] = await store.list_deliveries()
        await store.mark_dead(row.id, "gave up", time.time())
    finally:
        await store.close()
    await owner.start()
    try:
        await owner.wait_serving(session, time.monotonic() + 20)
        await wait_owned(postgres_url, "alerts", owner.pid)

        result = await asyncio.to_thread(
            run_cli,
            "outbox",
            "--config",
            owner.config,
            "retry",
            "--all-dead",
            environment={"BRIDGE_STORE_URL": postgres_url},
        )
        assert result.returncode == 0, result.stderr
        received = await fake_chat.wait_for(1, timeout=10, path="/alerts")
        assert _received_builds(received) == [7]
    finally:
        await owner.stop()


async def test_the_outbox_command_reads_the_shared_store(
    tmp_path: Path, fake_chat: FakeChat, postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    replica = Replica(tmp_path, fake_chat, postgres_url)
    monkeypatch.setenv("BRIDGE_STORE_URL", postgres_url)
    store = open_store(parse_config(replica.config.read_text(), replica.config).store)
    assert isinstance(store, PostgresStore)
    await store.open(serving=False)
    try:
        await store.accept(_new_event(7), plan(["alerts"]))
    finally:
        await store.close()

    result = await asyncio.to_thread(
        run_cli,
        "outbox",
        "--config",
        replica.config,
        "list",
        "--pending",
        environment={"BRIDGE_STORE_URL": postgres_url},
    )
    assert result.returncode == 0, result.stderr
    assert "alerts" in result.stdout
    assert "#7" in result.stdout
    assert "1 pending" in result.stderr


def _new_event(number: int) -> NewEvent:
    return NewEvent(
        key=f"event-{number}",
        factory="andy-corp",
        trigger="platform-devel",
        build_id=number,
        status="FAILED",
        body=event_body(number),
        received_at=time.time(),
    )


# -- configuring the store --------------------------------------------------------


def _config(tmp_path: Path, store: str, more: str = "") -> str:
    path = tmp_path / "config.toml"
    text = f"""
        {more}
        [store]
        {store}

        [[sources]]
        name = "docs-example"
        secret = "{SECRET}"
        factories = ["*"]
        """
    path.write_text(textwrap.dedent(text))
    return str(path)


def test_a_store_url_from_the_environment_selects_postgresql(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STORE_URL", "postgresql://bridge:pa55-word@db.internal:5433/bridge")
    path = _config(tmp_path, 'url = "${STORE_URL}"')
    config = parse_config(Path(path).read_text(), Path(path))

    store = open_store(config.store)

    assert isinstance(store, PostgresStore)
    assert store.where == "postgresql://bridge@db.internal:5433/bridge"
    assert "pa55-word" in config.secrets()  # redacted wherever it appears alone
    assert "pa55-word" not in repr(config)


@pytest.mark.parametrize(
    ("store", "problem"),
    [
        ('url = "mysql://bridge:pa55-word@db/bridge"', "store.url: expected a postgresql://"),
        (
            'url = "postgresql://bridge:pa55-word@db/bridge"\npath = "bridge.sqlite3"',
            "store: give either path (SQLite) or url (PostgreSQL), not both",
        ),
        ('url = "postgresql://bridge:pa55-word@db:port/bridge"', "store.url: not a URL"),
    ],
)
def test_a_bad_store_url_is_a_config_problem_that_keeps_the_secret(
    tmp_path: Path, store: str, problem: str
) -> None:
    path = _config(tmp_path, store)

    with pytest.raises(ConfigError) as failure:
        parse_config(Path(path).read_text(), Path(path))

    assert any(p.startswith(problem) for p in failure.value.problems), failure.value.problems
    assert "pa55-word" not in str(failure.value)


async def test_serve_without_its_postgresql_exits_with_the_reason_and_no_password(
    tmp_path: Path,
) -> None:
    port = free_port()  # nothing listens there
    path = _config(
        tmp_path,
        f'url = "postgresql://bridge:pa55-word@127.0.0.1:{port}/bridge"',
        more="[admin]\nenabled = false\n[server]\nport = 0\n",
    )

    result = await asyncio.to_thread(run_cli, "serve", "--config", path)

    assert result.returncode == 1
    assert f"cannot open the PostgreSQL store postgresql://bridge@127.0.0.1:{port}" in result.stderr
    assert "pa55-word" not in result.stdout + result.stderr
