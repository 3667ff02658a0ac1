"""Silences and acknowledgements in the store, over SQLite and PostgreSQL (test_store's
parametrised fixtures): kept, listed, expired; a muted delivery stored `silenced` and never
claimed; a redraw queued for an incident's build."""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace

from bridge.silences import Acknowledgement, NewSilence
from bridge.store import Planned, Store
from tests.test_store import LEASE, backend, claim_ids, event, store

__all__ = ["backend", "store"]  # the fixtures, over both backends

NOW = time.time()


def muting(trigger: str = "platform-*", destination: str | None = "ci-alerts") -> NewSilence:
    return NewSilence(
        factory="andy-*",
        trigger=trigger,
        destination=destination,
        starts_at=NOW,
        ends_at=NOW + 3600,
        comment="host swap",
        author="ana",
    )


async def test_silences_are_kept_listed_and_expired(store: Store) -> None:
    first = await store.add_silence(muting(), NOW)
    second = await store.add_silence(muting("docs", None), NOW + 1)
    assert (first.factory, first.trigger, first.destination) == (
        "andy-*",
        "platform-*",
        "ci-alerts",
    )
    assert (first.comment, first.author, first.created_at) == ("host swap", "ana", NOW)
    assert second.destination is None and second.id > first.id
    assert [s.id for s in await store.silences(NOW)] == [second.id, first.id]

    expired = await store.expire_silence(first.id, NOW + 10)
    assert expired is not None and expired.ends_at == NOW + 10
    assert expired.state(NOW + 10) == "expired"
    assert [s.id for s in await store.silences(NOW + 10)] == [second.id]
    assert [s.id for s in await store.silences(None)] == [second.id, first.id]
    # Expiring again changes nothing; an unknown silence is None.
    again = await store.expire_silence(first.id, NOW + 20)
    assert again is not None and again.ends_at == NOW + 10
    assert await store.expire_silence(999_999, NOW) is None


async def test_a_silence_is_pruned_only_once_it_ended_before_the_retention(
    store: Store,
) -> None:
    ended = await store.add_silence(muting(), NOW)
    await store.expire_silence(ended.id, NOW + 10)
    active = await store.add_silence(muting("docs"), NOW)  # ends at NOW + 3600

    await store.purge(NOW + 10, ("sent",))  # ended at the cut, not before it: kept
    assert {s.id for s in await store.silences(None)} == {ended.id, active.id}
    await store.purge(NOW + 11, ("sent",))
    assert [s.id for s in await store.silences(None)] == [active.id]


async def test_a_pending_silence_expired_is_expired(store: Store) -> None:
    later = await store.add_silence(
        NewSilence(
            factory="*",
            trigger="*",
            destination=None,
            starts_at=NOW + 600,
            ends_at=NOW + 900,
            comment="maintenance window",
            author="ana",
        ),
        NOW,
    )
    assert later.state(NOW) == "pending"
    expired = await store.expire_silence(later.id, NOW)
    assert expired is not None and expired.state(NOW) == "expired"


async def test_a_silenced_delivery_is_stored_shown_and_never_claimed(store: Store) -> None:
    silence = await store.add_silence(muting(), NOW)

    def plan(_: object) -> list[tuple[str, tuple[str, ...]]]:
        return [("ci-alerts", ("<@U1>",)), ("audit", ())]

    # The store mutes what a silence in force covers, as it stores the event.
    accepted = await store.accept(event(41, at=NOW), plan)
    assert accepted.deliveries == 2 and accepted.destinations == ("audit",)
    assert await claim_ids(store, "ci-alerts", NOW + 1) == []
    assert len(await claim_ids(store, "audit", NOW + 1)) == 1
    [row] = await store.list_deliveries(state="silenced")
    assert (row.destination, row.last_error) == ("ci-alerts", f"silenced by silence {silence.id}")
    counts = await store.counts()
    assert counts["silenced"] == 1 and counts["pending"] == 1
    assert await store.silenced_events("ci-alerts", [accepted.event_id]) == {accepted.event_id}
    assert await store.silenced_events("audit", [accepted.event_id]) == set()
    assert await store.purge(NOW + 10, ("silenced",)) == 1


async def test_acknowledgements_are_kept_once_per_root(store: Store) -> None:
    def ack(anchor: int, user: str, at: float) -> Acknowledgement:
        return Acknowledgement(
            destination="ci-alerts",
            factory="andy-corp",
            trigger="platform-devel",
            anchor=anchor,
            user_id=user,
            user_name=user.lower(),
            at=at,
        )

    await store.acknowledge(ack(41, "U1", NOW))
    await store.acknowledge(ack(41, "U2", NOW + 1))  # the root was acknowledged already
    await store.acknowledge(ack(50, "U2", NOW + 2))
    found = await store.acknowledgements("ci-alerts", "andy-corp", "platform-devel")
    assert sorted((a.anchor, a.user_id, a.user_name) for a in found) == [
        (41, "U1", "u1"),
        (50, "U2", "u2"),
    ]
    assert await store.acknowledgements("ops", "andy-corp", "platform-devel") == []


async def test_a_redraw_queues_a_delivery_of_the_builds_latest_completion(store: Store) -> None:
    def plan(_: object) -> list[Planned]:
        return [Planned("ci-alerts")]

    latest = await store.accept(event(41, at=NOW, completed=NOW - 1), plan)
    await store.accept(event(41, at=NOW, completed=NOW - 9), plan)  # an earlier one, late
    for delivery in await claim_ids(store, "ci-alerts", NOW):
        await store.mark_sent(delivery, NOW)

    assert await store.redraw("ci-alerts", "andy-corp", "platform-devel", 41, NOW + 1)
    [claimed] = (await store.claim("ci-alerts", NOW + 2, 32, LEASE)).deliveries
    assert (claimed.build_id, claimed.event_id, claimed.mentions) == (41, latest.event_id, ())
    assert claimed.transition is not None  # a lane reconciles the incident with it
    assert not await store.redraw("ci-alerts", "andy-corp", "platform-devel", 99, NOW)


async def test_only_a_silence_in_force_when_the_event_came_mutes_it(store: Store) -> None:
    """Silences pending, expired or elsewhere mute nothing; a burst of accepts (one
    transaction on PostgreSQL) each sees the silences in force at its own arrival."""
    await store.add_silence(muting(), NOW)
    await store.expire_silence((await store.add_silence(muting("*", None), NOW)).id, NOW + 5)
    await store.add_silence(replace(muting("platform-*", "audit"), starts_at=NOW + 100), NOW)

    def plan(_: object) -> list[tuple[str, tuple[str, ...]]]:
        return [("ci-alerts", ()), ("audit", ()), ("ops", ())]

    before_end, after_end = event(41, at=NOW + 1), event(42, at=NOW + 10)
    elsewhere = event(43, at=NOW + 10, trigger="docs")
    answers = await asyncio.gather(
        *(store.accept(e, plan) for e in (before_end, after_end, elsewhere))
    )
    assert [a.destinations for a in answers] == [
        (),
        ("audit", "ops"),
        ("ci-alerts", "audit", "ops"),
    ]
