"""The PostgreSQL outbox's threads: what a threaded destination keeps of each trigger's
incidents (its thread, the messages it posted), and what it reads to redraw them."""

from __future__ import annotations

import json
from typing import Any

from bridge.incidents import Key, Record, Seen, Window
from bridge.store.postgres_pool import HIGHEST, LOWEST, PostgresPool
from bridge.store.records import LATEST_COPY

# A window (see `incidents.Window`): the passed builds nearest below and above a build ...
_WINDOW_BOUNDS = """
SELECT
    (SELECT build_id FROM builds WHERE factory = $1 AND trigger = $2 AND build_id < $3
        AND status = 'PASSED' ORDER BY build_id DESC LIMIT 1) AS lower,
    (SELECT build_id FROM builds WHERE factory = $1 AND trigger = $2 AND build_id > $3
        AND status = 'PASSED' ORDER BY build_id LIMIT 1) AS upper
"""
# ... and each build between, with the event of its latest completion.
_WINDOW_BUILDS = f"""
SELECT b.build_id, b.status, (SELECT e.id FROM events e WHERE e.factory = b.factory
    AND e.trigger = b.trigger AND e.build_id = b.build_id AND e.status = b.status
    {LATEST_COPY}) AS event_id
FROM builds b WHERE b.factory = $1 AND b.trigger = $2 AND b.build_id > $3 AND b.build_id <= $4
ORDER BY b.build_id
"""
_THREAD_RECORDS = """
SELECT kind, anchor, build_id, ref, digest, reposted FROM thread_messages
WHERE destination = $1 AND factory = $2 AND trigger = $3
    AND ((anchor > $4 AND anchor < $5) OR (build_id > $4 AND build_id <= $5))
"""


class PostgresThreads(PostgresPool):
    async def thread(self, destination: str, factory: str, trigger: str) -> str | None:
        async def work(c: Any) -> str | None:
            found = await c.fetchval(
                "SELECT thread FROM threads"
                " WHERE destination = $1 AND factory = $2 AND trigger = $3",
                destination,
                factory,
                trigger,
            )
            return None if found is None else str(found)

        return await self._run(work)

    async def set_thread(
        self, destination: str, factory: str, trigger: str, thread: str | None
    ) -> None:
        if thread is None:
            await self._execute(
                "DELETE FROM threads WHERE destination = $1 AND factory = $2 AND trigger = $3",
                destination,
                factory,
                trigger,
            )
        else:
            await self._execute(
                "INSERT INTO threads (destination, factory, trigger, thread)"
                " VALUES ($1, $2, $3, $4) ON CONFLICT (destination, factory, trigger)"
                " DO UPDATE SET thread = excluded.thread",
                destination,
                factory,
                trigger,
                thread,
            )

    async def trigger_window(self, factory: str, trigger: str, build_id: int) -> Window:
        async def work(c: Any) -> Window:
            bounds = await c.fetchrow(_WINDOW_BOUNDS, factory, trigger, build_id)
            lower, upper = bounds["lower"], bounds["upper"]
            rows = await c.fetch(
                _WINDOW_BUILDS,
                factory,
                trigger,
                LOWEST if lower is None else lower,
                HIGHEST if upper is None else upper,
            )
            builds = {
                int(row["build_id"]): Seen(
                    str(row["status"]), None if row["event_id"] is None else int(row["event_id"])
                )
                for row in rows
            }
            return Window(
                None if lower is None else int(lower), None if upper is None else int(upper), builds
            )

        return await self._run(work, transaction=True)

    async def event_bodies(self, ids: list[int]) -> dict[int, bytes]:
        async def work(c: Any) -> dict[int, bytes]:
            rows = await c.fetch("SELECT id, body FROM events WHERE id = ANY($1::bigint[])", ids)
            return {int(row["id"]): bytes(row["body"]) for row in rows}

        return await self._run(work)

    async def delivery_mentions(
        self, destination: str, event_ids: list[int]
    ) -> dict[int, tuple[str, ...]]:
        async def work(c: Any) -> dict[int, tuple[str, ...]]:
            rows = await c.fetch(
                "SELECT event_id, mentions FROM deliveries WHERE destination = $1"
                " AND mentions IS NOT NULL AND event_id = ANY($2::bigint[])",
                destination,
                event_ids,
            )
            return {int(row["event_id"]): tuple(json.loads(row["mentions"])) for row in rows}

        return await self._run(work)

    async def thread_records(
        self, destination: str, factory: str, trigger: str, window: Window
    ) -> list[Record]:
        async def work(c: Any) -> list[Record]:
            rows = await c.fetch(
                _THREAD_RECORDS,
                destination,
                factory,
                trigger,
                LOWEST if window.lower is None else window.lower,
                HIGHEST if window.upper is None else window.upper,
            )
            return [
                Record(
                    row["kind"],
                    int(row["anchor"]),
                    int(row["build_id"]),
                    str(row["ref"]),
                    str(row["digest"]),
                    bool(row["reposted"]),
                )
                for row in rows
            ]

        return await self._run(work)

    async def save_thread_record(
        self, destination: str, factory: str, trigger: str, record: Record
    ) -> None:
        await self._execute(
            "INSERT INTO thread_messages (destination, factory, trigger, anchor, kind, build_id,"
            " ref, digest, reposted) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)"
            " ON CONFLICT (destination, factory, trigger, anchor, kind, build_id) DO UPDATE"
            " SET ref = excluded.ref, digest = excluded.digest, reposted = excluded.reposted",
            destination,
            factory,
            trigger,
            record.anchor,
            record.kind,
            record.build,
            record.ref,
            record.digest,
            record.reposted,
        )

    async def drop_thread_records(
        self, destination: str, factory: str, trigger: str, keys: list[Key]
    ) -> None:
        async def work(c: Any) -> None:
            await c.executemany(
                "DELETE FROM thread_messages WHERE destination = $1 AND factory = $2"
                " AND trigger = $3 AND kind = $4 AND anchor = $5 AND build_id = $6",
                [(destination, factory, trigger, *key) for key in keys],
            )

        await self._run(work)
