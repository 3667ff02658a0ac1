"""Running the jobserv-bridge command as users do: `python -m bridge ...` in a subprocess.

`run_cli` runs one command to its end; `BridgeProcess` is a `serve` that the tests
start, signal, kill and start again, with its stdout and stderr kept in files.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, Any

import aiohttp
import pytest

from tests.conftest import FAILED, fixture_body, signed_headers

REPO_ROOT = Path(__file__).resolve().parent.parent
START_DEADLINE = 10.0


def free_port() -> int:
    """A loopback port nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def event_body(number: int) -> bytes:
    """The failed fixture as a distinct event: its own build, url and completion time."""
    build = json.loads(fixture_body(FAILED))
    build["build_id"] = number
    build["url"] = f"https://api.foundries.io/projects/andy-corp/lmp/builds/{number}/"
    build["web_url"] = f"https://ci.foundries.io/projects/andy-corp/lmp/builds/{number}"
    minutes, seconds = divmod(number, 60)
    build["completed"] = f"2026-01-01T10:{minutes:02d}:{seconds:02d}+00:00"
    return json.dumps(build).encode()


def run_cli(
    *args: str | Path, environment: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """`python -m bridge ARGS` to its end, without the webhook secret of this environment."""
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in ("JOBSERV_WEBHOOK_SECRET", "PYTHONPATH")
    }
    env.update(PYTHONPATH=str(REPO_ROOT), **(environment or {}))
    return subprocess.run(
        [sys.executable, "-m", "bridge", *map(str, args)],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO_ROOT,
        timeout=30,
        check=False,
    )


async def spawn_serve(
    config: Path,
    *,
    stdout: int | IO[Any] | None,
    stderr: int | IO[Any] | None,
    args: Sequence[str] = (),
    environment: dict[str, str] | None = None,
) -> asyncio.subprocess.Process:
    """`python -m bridge serve --config CONFIG ARGS`, run in the config's folder."""
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bridge",
        "serve",
        "--config",
        str(config),
        *args,
        stdout=stdout,
        stderr=stderr,
        cwd=config.parent,
        env={
            **os.environ,
            "PYTHONPATH": str(REPO_ROOT),
            "PYTHONUNBUFFERED": "1",
            **(environment or {}),
        },
    )


async def wait_healthy(
    process: asyncio.subprocess.Process,
    session: aiohttp.ClientSession,
    base_url: str,
    deadline: float,
    log: Callable[[], str],
) -> None:
    """Poll GET /healthz until it answers 200; fails with the log if the process exits
    or the monotonic `deadline` passes first."""
    while True:
        if process.returncode is not None:
            pytest.fail(f"bridge exited {process.returncode}:\n{log()}")
        with contextlib.suppress(aiohttp.ClientError):
            async with session.get(f"{base_url}/healthz") as response:
                if response.status == 200:
                    return
        if time.monotonic() > deadline:
            pytest.fail(f"bridge not healthy in time:\n{log()}")
        await asyncio.sleep(0.05)


class BridgeProcess:
    """One `python -m bridge serve --config F ARGS`, startable again after it stops."""

    def __init__(self, config: Path, port: int, logs: Path, args: Sequence[str] = ()) -> None:
        self.config = config
        self.port = port
        self.logs = logs
        self.args = list(args)
        self.runs = 0
        self.process: asyncio.subprocess.Process | None = None
        # A fresh connection per request: a killed bridge leaves no stale one behind.
        self.session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True))

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stdout(self) -> str:
        return (self.logs / f"stdout-{self.runs}.txt").read_text()

    def stderr(self) -> str:
        return (self.logs / f"stderr-{self.runs}.txt").read_text()

    async def launch(self) -> None:
        self.runs += 1
        with (
            (self.logs / f"stdout-{self.runs}.txt").open("wb") as out,
            (self.logs / f"stderr-{self.runs}.txt").open("wb") as err,
        ):
            self.process = await spawn_serve(self.config, stdout=out, stderr=err, args=self.args)

    async def start(self) -> None:
        """Launch and wait until /healthz answers 200."""
        await self.launch()
        assert self.process is not None
        deadline = time.monotonic() + START_DEADLINE
        await wait_healthy(self.process, self.session, self.base_url, deadline, self.stderr)

    async def post(self, body: bytes) -> int:
        async with self.session.post(
            f"{self.base_url}/webhook", data=body, headers=signed_headers(body)
        ) as response:
            return response.status

    async def accept(self, *numbers: int) -> None:
        for number in numbers:
            assert await self.post(event_body(number)) == 202

    def send_signal(self, sig: signal.Signals) -> None:
        assert self.process is not None
        self.process.send_signal(sig)

    async def wait_exit(self, timeout: float) -> int:  # noqa: ASYNC109 (a deadline, in seconds)
        assert self.process is not None
        try:
            return await asyncio.wait_for(self.process.wait(), timeout)
        except TimeoutError:
            pytest.fail(f"bridge still running {timeout}s later:\n{self.stderr()}")

    async def kill(self) -> None:
        """kill -9: no cleanup of any kind in the bridge."""
        assert self.process is not None
        self.process.kill()
        await self.process.wait()

    async def close(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.kill()
            await self.process.wait()
        await self.session.close()


# A crash can repeat a lane's sends whose outcome was not written yet (they are written in
# batches, a few milliseconds apart) and the one in flight: a few, never more than this.
FEW_RESENT = 8


def resent_after_a_crash(received: list[int]) -> list[int]:
    """The builds a lane sent twice around one crash, after checking that at-least-once
    kept its shape: in order before the crash and after it, and what went twice is the last
    few sent before the crash, sent again first, in order."""
    drops = [i for i in range(1, len(received)) if received[i] <= received[i - 1]]
    assert len(drops) <= 1, f"out of order: {received}"
    if not drops:
        return []
    before, after = received[: drops[0]], received[drops[0] :]
    assert after == sorted(set(after)), f"out of order after the crash: {received}"
    again = len(set(before) & set(after))
    assert 1 <= again <= FEW_RESENT, f"resent {again}: {received}"
    assert before[-again:] == after[:again], f"resent other than the last sends: {received}"
    return after[:again]
