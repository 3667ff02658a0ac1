"""Failed test names for failed runs, fetched from the JobServ API before rendering.

A failed run with a `tests` URL lists its tests there; for the first few failed
ones we also read the test itself and count its failed results. Answers are
cached by URL for a few minutes (a retried message or one sent to several
destinations asks once), and a fetch in flight is shared. Whatever goes wrong
(a timeout, a 404 - JobServ's answer to an unauthorized read - or an unexpected
body), the message still goes out; the run is marked as having its tests
unavailable.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import SplitResult, unquote, urlsplit, urlunsplit

import aiohttp
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator
from yarl import URL

from bridge.durations import Duration
from bridge.jobserv import Build, Run

log = logging.getLogger("bridge.failed_tests")

TOKEN_HEADER = "OSF-TOKEN"
CACHE_SIZE = 256
CACHE_SECONDS = 300.0
# Requests in flight at once to the JobServ API, over every message.
CONCURRENT_REQUESTS = 8
# Failed result names kept per test (their count is always complete).
RESULT_NAMES = 3
# A test's answer carries every result's output: read no more than this.
MAX_BODY_BYTES = 8 * 1024 * 1024

_T = TypeVar("_T")
_M = TypeVar("_M", bound=BaseModel)


def http_url(url: str) -> SplitResult | None:
    """The parts of an http(s) URL with a host and a numeric port, else None."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 (raises on a port that is not a number)
    except ValueError:
        return None
    return parts if parts.scheme in ("http", "https") and parts.hostname else None


# The failed tests of one message are looked up within this, well under a claim's lease.
JOBSERV_MAX_TIMEOUT = 30.0


class JobservConfig(BaseModel):
    """The JobServ API, to name the failed tests of failed runs; only read when configured."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    api_token: SecretStr  # sent as OSF-TOKEN; needs the ci:read scope
    # Every API URL a build names is asked of this origin instead (the token goes nowhere else).
    api_url: str = "https://api.foundries.io/"
    max_failed_tests: int = Field(default=5, ge=1, description="failed tests named per run")
    # For all the lookups of one message.
    timeout: Duration = 5.0

    @field_validator("api_token")
    @classmethod
    def _not_empty(cls, token: SecretStr) -> SecretStr:
        if not token.get_secret_value():
            raise ValueError("must not be empty")
        return token

    @field_validator("timeout")
    @classmethod
    def _short(cls, seconds: float) -> float:
        if not 0 < seconds <= JOBSERV_MAX_TIMEOUT:
            raise ValueError(f"must be more than 0s and at most {JOBSERV_MAX_TIMEOUT:g}s")
        return seconds

    @field_validator("api_url")
    @classmethod
    def _http_url(cls, url: str) -> str:
        parts = http_url(url)
        if parts is None:
            raise ValueError("expected an http(s)://HOST[:PORT]/ URL")
        if parts.query or parts.fragment:
            raise ValueError("expected a URL without a query or fragment")
        return url


class Unavailable(Exception):
    """The API could not tell a run's tests; the message says one line why."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class _ListedTest(_Model):
    name: str
    url: str
    status: str


class _TestList(_Model):
    tests: list[_ListedTest]


class _TestListAnswer(_Model):
    data: _TestList


class _Result(_Model):
    name: str
    status: str


class _Test(_Model):
    results: list[_Result] = []


class _TestDetail(_Model):
    test: _Test


class _TestAnswer(_Model):
    data: _TestDetail


@dataclass(frozen=True)
class FailedResults:
    """What one failed test's own answer says: how many results failed, and the first."""

    count: int
    names: list[str]


@dataclass(frozen=True)
class FailedTest:
    name: str
    url: str  # the test's API URL, as JobServ gave it
    failed_results: int | None  # None when the test's own answer did not come
    results: list[str]  # the first failed results' names

    def as_context(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "url": self.url,
            "failed_results": self.failed_results,
            "results": list(self.results),
        }


@dataclass(frozen=True)
class RunTests:
    """A failed run's tests: the failed ones (up to the maximum), or unavailable."""

    failed: list[FailedTest] = field(default_factory=list)
    more: int = 0  # failed tests beyond the maximum, not listed
    unavailable: bool = False


UNAVAILABLE = RunTests(unavailable=True)


def api_url_of(url: str, api_url: str) -> URL:
    """`url` with its origin replaced by `api_url`'s (and `api_url`'s path as a prefix).

    The token is only ever sent to the configured API, whatever a build names: a path
    whose dot segments (`..`, `%2e%2e`) would lead out of `api_url`'s path is refused.
    """
    try:
        parts = urlsplit(url)
        base = urlsplit(api_url)
    except ValueError:
        raise Unavailable(f"not a URL: {url!r}") from None
    if not parts.path.startswith("/"):
        raise Unavailable(f"not an API URL: {url!r}")
    prefix = base.path.rstrip("/")
    path = _without_dot_segments(prefix + parts.path)
    if path is None or not path.startswith(prefix + "/"):
        raise Unavailable(f"not under the API's path: {url!r}")
    target = urlunsplit((base.scheme, base.netloc, path, parts.query, ""))
    # Encoded: taken as it is, so that nothing between here and the wire reads it again.
    return URL(target, encoded=True)


def _without_dot_segments(path: str) -> str | None:
    """`path` with its `.` and `..` segments (percent-encoded ones too) resolved; None
    when a segment hides a separator (`%2f`, `\\`) a server could split it at, or when
    `..` climbs above the root."""
    kept: list[str] = []
    segments = path.split("/")
    for index, segment in enumerate(segments):
        decoded = _fully_unquoted(segment)
        if "/" in decoded or "\\" in decoded:
            return None
        if decoded == "..":
            if len(kept) <= 1:  # kept[0] is the empty segment before the leading "/"
                return None
            kept.pop()
        elif decoded != "." or index == 0:
            kept.append(segment)
        if decoded in (".", "..") and index == len(segments) - 1:
            kept.append("")  # "/a/b/.." is the folder "/a/"
    return "/".join(kept)


def _fully_unquoted(text: str) -> str:
    """Percent-decoded until nothing changes: `%252e` is a dot to a server that decodes twice."""
    while (decoded := unquote(text)) != text:
        text = decoded
    return text


@dataclass
class _Cached:
    expires: float
    task: asyncio.Task[Any]


class FailedTestsFetcher:
    """Looks up failed runs' failed tests over a shared session, with a small cache."""

    def __init__(self, session: aiohttp.ClientSession) -> None:
        self.session = session
        self.cache: OrderedDict[URL, _Cached] = OrderedDict()
        self.requests = asyncio.Semaphore(CONCURRENT_REQUESTS)

    async def for_build(
        self, build: Build, api: JobservConfig, most_runs: int | None = None
    ) -> dict[str, RunTests]:
        """Failed tests by run name, for the first `most_runs` failed runs with tests.

        Takes at most `api.timeout` seconds; a run not told by then is unavailable.
        """
        failed = [run for run in build.runs if run.status == "FAILED"]
        runs = [run for run in failed[:most_runs] if run.tests]
        if not runs:
            return {}
        deadline = asyncio.get_running_loop().time() + api.timeout
        found = await asyncio.gather(*(self._run(run, api, deadline) for run in runs))
        return {run.name: tests for run, tests in zip(runs, found, strict=True)}

    async def _run(self, run: Run, api: JobservConfig, deadline: float) -> RunTests:
        assert run.tests is not None
        try:
            async with asyncio.timeout_at(deadline):
                listed = await self._cached(run.tests, api, self._test_list)
        except TimeoutError:
            log.warning("tests of run %s: no answer within %gs", run.name, api.timeout)
            return UNAVAILABLE
        except Unavailable as exc:
            log.warning("tests of run %s: %s", run.name, exc)
            return UNAVAILABLE
        except Exception:
            log.exception("tests of run %s: cannot read them", run.name)
            return UNAVAILABLE
        failed = [test for test in listed if test.status == "FAILED"]
        shown = failed[: api.max_failed_tests]
        lookups = [
            asyncio.ensure_future(self._cached(test.url, api, self._failed_results))
            for test in shown
        ]
        if lookups:
            await asyncio.wait(
                lookups, timeout=max(deadline - asyncio.get_running_loop().time(), 0)
            )
        tests = []
        for test, lookup in zip(shown, lookups, strict=True):
            results: FailedResults | None = None
            if not lookup.done():
                lookup.cancel()  # the shared fetch goes on, and is cached for a retry
            elif lookup.cancelled():
                pass
            elif (error := lookup.exception()) is None:
                results = lookup.result()
            elif isinstance(error, Unavailable):
                log.warning("test %s of run %s: %s", test.name, run.name, error)
            else:
                log.error("test %s of run %s: cannot read it", test.name, run.name, exc_info=error)
            tests.append(
                FailedTest(
                    test.name,
                    test.url,
                    results.count if results else None,
                    results.names if results else [],
                )
            )
        return RunTests(tests, more=len(failed) - len(shown))

    async def _cached(
        self,
        url: str,
        api: JobservConfig,
        read: Callable[[URL, JobservConfig], Coroutine[Any, Any, _T]],
    ) -> _T:
        """The answer for `url`, from the cache, a fetch in flight, or a new fetch."""
        target = api_url_of(url, api.api_url)
        now = time.monotonic()
        entry = self.cache.get(target)
        if entry is None or entry.expires <= now:
            entry = _Cached(now + CACHE_SECONDS, asyncio.create_task(read(target, api)))
            self.cache[target] = entry
            entry.task.add_done_callback(lambda task: self._forget_failure(target, task))
            while len(self.cache) > CACHE_SIZE:
                self.cache.popitem(last=False)
        else:
            self.cache.move_to_end(target)
        # Shielded: one caller giving up does not cancel the fetch for the others.
        result: _T = await asyncio.shield(entry.task)
        return result

    def _forget_failure(self, url: URL, task: asyncio.Task[Any]) -> None:
        """Only answers are cached: a retry asks again after a failure."""
        if task.cancelled() or task.exception() is not None:
            entry = self.cache.get(url)
            if entry is not None and entry.task is task:
                del self.cache[url]

    async def _test_list(self, url: URL, api: JobservConfig) -> list[_ListedTest]:
        answer = await self._get(url, api, _TestListAnswer)
        return answer.data.tests

    async def _failed_results(self, url: URL, api: JobservConfig) -> FailedResults:
        answer = await self._get(url, api, _TestAnswer)
        failed = [result.name for result in answer.data.test.results if result.status == "FAILED"]
        return FailedResults(len(failed), failed[:RESULT_NAMES])

    async def _get(self, url: URL, api: JobservConfig, shape: type[_M]) -> _M:
        headers = {TOKEN_HEADER: api.api_token.get_secret_value(), "Accept": "application/json"}
        try:
            async with (
                self.requests,
                self.session.get(
                    url,
                    headers=headers,
                    timeout=aiohttp.ClientTimeout(total=api.timeout),
                    # A redirect elsewhere would take the token along.
                    allow_redirects=False,
                ) as response,
            ):
                if response.status != 200:
                    raise Unavailable(f"GET {url}: HTTP {response.status}")
                body = await _read_limited(response, MAX_BODY_BYTES)
        except (aiohttp.ClientError, TimeoutError) as exc:
            reason = "no answer in time" if isinstance(exc, TimeoutError) else exc
            raise Unavailable(f"GET {url}: {reason}") from None
        try:
            return shape.model_validate_json(body)
        except ValidationError:
            raise Unavailable(f"GET {url}: not the expected JSON") from None

    async def close(self) -> None:
        """Cancel the fetches still in flight (before the session closes)."""
        tasks = [entry.task for entry in self.cache.values() if not entry.task.done()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self.cache.clear()


async def _read_limited(response: aiohttp.ClientResponse, limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.content.iter_chunked(64 * 1024):
        size += len(chunk)
        if size > limit:
            raise Unavailable(f"GET {response.url}: answer over {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)
