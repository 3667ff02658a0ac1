"""Threaded destinations: each delivery brings the chat's messages about its build's
trigger to what the trigger's incidents call for (`bridge.incidents.plan`).

The lane calls `reconcile` for every delivery to a chat that threads and edits (Slack's
Web API, Matrix). It reads the builds around the delivery's build and the records of the
messages the destination holds about them, carries out the planned posts and edits one
at a time, and records each as soon as the chat took it. So a delivery stopped half way
(a 5xx, a timeout, a crash) is a Retry whose next attempt plans again from the records
and does only what is left.

A root the chat no longer has (deleted) is posted again, saying so, and its thread's
replies with it; a reply or mark refused for the same reason is forgotten and planned
again.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from typing import Any

from bridge.chats.base import Body, ThreadedChat
from bridge.incidents import (
    BuildView,
    Content,
    Edit,
    Key,
    Mark,
    Post,
    Record,
    Role,
    RootView,
    Window,
    digest,
    incidents,
    plan,
)
from bridge.jobserv import Build, NotABuild, parse_build
from bridge.outcome import Failed, Outcome, Retry, Sent
from bridge.render import build_context, context
from bridge.silences import acknowledged_by, silencing
from bridge.slack_interactions import IncidentRef, button_value
from bridge.store import Delivery, ThreadStore

log = logging.getLogger("bridge.threads")

# A chat's answer that the message an action needs is gone (deleted in the chat).
GONE = frozenset(
    {
        "slack_message_not_found",
        "slack_thread_not_found",
        "slack_cant_update_message",
        "http_404",
    }
)
# Rounds of planning in one delivery: each round after the first follows a deleted message.
ROUNDS = 4


@dataclass(frozen=True)
class Draft:
    """What a message is rendered from: a build, what the message adds to its status, and
    for a root, the incident."""

    build: Build
    event_id: int
    note: str
    incident: dict[str, Any] | None = None
    mentions: tuple[str, ...] = ()

    def context(self, destination: str, facts: dict[str, Any]) -> dict[str, Any]:
        """The template context: a message of `build` (`facts`: its `build_context`), with
        `note`, and `incident` for a root (None for any other message)."""
        found = context(
            self.build,
            event_id=self.event_id,
            destination=destination,
            mentions=self.mentions,
            facts=facts,
        )
        return {**found, "note": self.note, "incident": self.incident}


Render = Callable[[Draft], Awaitable[Body]]
Send = Callable[[Awaitable[Outcome]], Awaitable[Outcome]]


@dataclass
class Reconcile:
    chat: ThreadedChat
    store: ThreadStore
    destination: str
    wanted: frozenset[Role]
    render: Render
    send: Send
    # Slack's Acknowledge and Mute buttons on failing roots (a slack-api destination, [slack]).
    buttons: bool = False
    builds: dict[int, Build] = field(default_factory=dict)  # parsed events, by event id
    # Who each event's delivery here mentions: only news (the newest build on arrival) does,
    # and its message says so whichever delivery posts it.
    mentions: dict[int, tuple[str, ...]] = field(default_factory=dict)
    # The failed builds of acknowledged incidents: their messages mention no one.
    quiet: set[int] = field(default_factory=set)

    async def __call__(self, delivery: Delivery) -> Outcome:
        where = (self.destination, delivery.factory, delivery.trigger)
        now = time.time()
        acks = await self.store.acknowledgements(*where)
        muted = silencing(await self.store.silences(now), *where[1:], self.destination, now)
        for _ in range(ROUNDS):
            around = await self.store.trigger_window(*where[1:], delivery.build_id)
            records = await self.store.thread_records(*where, around)
            silenced = await self._silenced(around)
            actions = plan(around.builds, records, self.wanted, acks, muted, silenced)
            self.quiet = {
                n
                for i in incidents(around.builds)
                if acknowledged_by(acks, i.failed)
                for n in i.failed
            }
            if not actions:
                return Sent()
            await self._read_builds(around, actions)
            roots = {r.anchor: r for r in records if r.kind == "root"}
            outcome = await self._carry_out(delivery, actions, roots)
            if outcome is not None:
                return outcome
        return Retry("the chat's messages kept disappearing", code="thread_gone")

    async def _silenced(self, around: Window) -> frozenset[int]:
        """The builds whose delivery here a silence muted: never shown on their own."""
        events = {seen.event_id: n for n, seen in around.builds.items() if seen.event_id}
        found = await self.store.silenced_events(self.destination, sorted(events))
        return frozenset(events[event_id] for event_id in found)

    async def _read_builds(self, around: Window, actions: list[Post | Edit]) -> None:
        wanted: set[int] = set()
        for action in actions:
            for event_id in _events(action.content):
                if event_id is not None and event_id not in self.builds:
                    wanted.add(event_id)
        if not wanted:
            return
        found = await self.store.delivery_mentions(self.destination, sorted(wanted))
        self.mentions.update(found)
        for event_id, body in (await self.store.event_bodies(sorted(wanted))).items():
            try:
                self.builds[event_id] = parse_build(body)
            except NotABuild:
                log.warning("event %d no longer parses as a build", event_id)

    async def _carry_out(
        self, delivery: Delivery, actions: list[Post | Edit], roots: dict[int, Record]
    ) -> Outcome | None:
        """Sent when every action was carried out; None when a message was gone (plan
        again); else the outcome that stopped it."""
        for action in actions:
            body = await self._body(action, delivery)
            if body is None:
                continue
            if isinstance(action, Post):
                outcome = await self._post(action, body, delivery, roots)
            else:
                outcome = await self._edit(action, body, delivery)
            if not isinstance(outcome, Sent):
                return outcome
        return Sent()

    async def _post(
        self, action: Post, body: Body, delivery: Delivery, roots: dict[int, Record]
    ) -> Outcome | None:
        where = (self.destination, delivery.factory, delivery.trigger)
        kind, anchor, number = action.key
        root = roots.get(anchor)
        # One delivery posts several messages here: each its own key, the same on every try.
        key = f"{delivery.key}-{kind}-{anchor}-{number}"
        if kind != "reply":
            sending = self.chat.send(body, key)
        elif root is not None and root.ref:
            sending = self.chat.reply(body, key, root.ref)
        else:
            return Sent()  # its root could not be shown (its build is no longer stored)
        outcome = await self.send(sending)
        if isinstance(outcome, Sent):
            if not outcome.ref:
                return Failed("the chat did not say where it posted the message", code="no_ref")
            reposted = isinstance(action.content, RootView) and action.content.reposted
            record = Record(kind, anchor, number, outcome.ref, digest(action.content), reposted)
            await self.store.save_thread_record(*where, record)
            if kind == "root":
                roots[anchor] = record
            return outcome
        if kind == "reply" and root is not None and _gone(outcome):
            await self._root_gone(delivery, root)
            return None
        return outcome

    async def _edit(self, action: Edit, body: Body, delivery: Delivery) -> Outcome | None:
        where = (self.destination, delivery.factory, delivery.trigger)
        record = action.record
        shown = digest(action.content)
        # Its own key, the same on every try of this delivery, naming what the message showed
        # and what it shows now: Matrix dedupes by key, and would take an edit back to an
        # earlier content (A, B, A) for the earlier edit and change nothing.
        kind, anchor, number = record.key
        key = f"{delivery.key}-edit-{kind}-{anchor}-{number}-{record.digest[:12]}-{shown[:12]}"
        outcome = await self.send(self.chat.update(record.ref, body, key))
        if isinstance(outcome, Sent):
            updated = replace(record, digest=shown)
            await self.store.save_thread_record(*where, updated)
            return outcome
        if not _gone(outcome):
            return outcome
        if record.kind == "root":
            await self._root_gone(delivery, record)
        else:  # a reply or message deleted in the chat: planned again
            await self.store.drop_thread_records(*where, [record.key])
        return None

    async def _root_gone(self, delivery: Delivery, root: Record) -> None:
        """Post the root again, saying so; its thread's replies go with it."""
        where = (self.destination, delivery.factory, delivery.trigger)
        log.warning(
            "%s: the first message of the incident since #%d of %s %s is gone; posting it again",
            self.destination,
            root.anchor,
            delivery.factory,
            delivery.trigger,
        )
        everything = await self.store.thread_records(*where, Window(None, None, {}))
        replies = [r.key for r in everything if r.kind == "reply" and r.anchor == root.anchor]
        await self.store.drop_thread_records(*where, replies)
        gone = Record("root", root.anchor, root.anchor, "", "gone", reposted=True)
        await self.store.save_thread_record(*where, gone)

    async def _body(self, action: Post | Edit, delivery: Delivery) -> Body | None:
        content = action.content
        if isinstance(content, Mark):
            text = f"{delivery.factory} / {delivery.trigger}: {content.text}"
            return self.chat.text_body(text)
        key = action.key if isinstance(action, Post) else action.record.key
        draft = self._draft(content, key if isinstance(action, Post) else None, key, delivery)
        if draft is None:
            log.warning(
                "%s: %s of %s: its build is no longer stored; not shown",
                self.destination,
                _key(action),
                delivery.trigger,
            )
            return None
        return await self.render(draft)

    def _draft(
        self, content: Content, posting: Key | None, key: Key, delivery: Delivery
    ) -> Draft | None:
        """What to render (`posting`: the key of a message posted, not edited; `key`: the
        message's, posted or edited).

        A failure that was news is told once, to whom its delivery mentions: in the root
        first posted for it (anchored at it), else in its reply.
        """
        if isinstance(content, BuildView):
            event_id = content.event_id or 0
            build = self.builds.get(event_id)
            if build is None:
                return None
            told = posting is None or posting[1] == content.build
            # An acknowledged incident's later builds are shown without mentions.
            told = told or content.build in self.quiet or key[1] in self.quiet
            mentions = () if told else self.mentions.get(event_id, ())
            return Draft(build, event_id, content.note, None, mentions)
        assert isinstance(content, RootView)
        first = self.builds.get(content.first_event or 0)
        latest = self.builds.get(content.latest_event or 0) or first
        first = first or latest
        if latest is None or first is None:
            return None
        incident = content.incident
        first_event = content.first_event or 0
        fresh = posting is not None and not content.reposted and not content.acknowledged_by
        mentions = self.mentions.get(first_event, ()) if fresh else ()
        failing = incident.fixed_by is None
        press = IncidentRef(self.destination, delivery.factory, delivery.trigger, key[1])
        details = {
            "summary": content.summary,
            "failing": failing,
            "fixed_by": incident.fixed_by,
            "count": incident.count,
            "failed_builds": list(incident.failed),
            "reposted": content.reposted,
            "first": build_context(first),
            "latest": build_context(latest),
            # What people did about it, and the buttons to do it (bridge.slack_interactions).
            "acknowledged_by": content.acknowledged_by,
            "muted": content.muted.shown() if content.muted else None,
            "buttons": button_value(press) if self.buttons and failing else "",
        }
        event_id = content.latest_event or content.first_event or 0
        return Draft(latest, event_id, content.summary, details, mentions)


def _events(content: Content) -> tuple[int | None, ...]:
    if isinstance(content, RootView):
        return (content.first_event, content.latest_event)
    if isinstance(content, BuildView):
        return (content.event_id,)
    return ()


def _key(action: Post | Edit) -> str:
    kind, _, number = action.key if isinstance(action, Post) else action.record.key
    return f"{kind} #{number}"


def _gone(outcome: Outcome) -> bool:
    return isinstance(outcome, Failed) and outcome.code in GONE
