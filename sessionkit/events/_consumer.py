"""The consumer of a consumer group over every stream of a prefix."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta
from functools import partial
from typing import Any, Literal

import anyio
from redis import exceptions as rx

from sessionkit.errors import BackendError, ValidationError
from sessionkit.events._entries import (
    Event,
    GroupStatus,
    _check,
    _fields,
    _id,
    _name,
    _seconds,
    _seq,
    _standing,
    _text,
)
from sessionkit.events._streams import _MORE_TRIES, _Streams, _Transient
from sessionkit.store import SessionStore


class EventConsumer:
    """One consumer of a consumer group over every event stream of a store's
    prefix.

    ``c = EventConsumer(store, group="cache", consumer="worker-1")``, then
    ``async for event in c: ...; await c.ack(event)``. It holds no
    connection of its own (it uses the store's client), so there is nothing
    to close. The group is made by `setup()` or the first read, starting at
    new events (``start="new"``) or at every event the
    streams still hold (``start="all"``); later starts resume where the group
    left off. A consumer first gets back its own unacknowledged events, and
    with `claim_after` also those another consumer of the group left
    unacknowledged for that long (a worker that died), then new events.
    `block` bounds how long one read waits for events (on a cluster, the
    interval between polls). On a cluster, a stream whose slot is being
    moved cannot be read until the move ends (a moment per slot); its
    events, pending ones included, come with a later read.
    """

    def __init__(
        self,
        store: SessionStore,
        *,
        group: str,
        consumer: str,
        start: Literal["new", "all"] = "new",
        count: int = 100,
        block: float | timedelta = 1.0,
        claim_after: float | timedelta | None = None,
    ) -> None:
        if not isinstance(store, SessionStore):
            raise ValidationError(
                f"EventConsumer needs a SessionStore, got {type(store).__name__}",
                details={"parameter": "store"},
            )
        self.group = _name(group, "group")
        self.consumer = _name(consumer, "consumer")
        if start not in ("new", "all"):
            raise ValidationError(
                f"start must be 'new' or 'all', got {start!r}", details={"parameter": "start"}
            )
        self.start = start
        if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= 10_000:
            raise ValidationError(
                f"count must be an int from 1 to 10000, got {count!r}",
                details={"parameter": "count"},
            )
        self.count = count
        self.block = _seconds(block, "block")
        self.claim_after = None if claim_after is None else _seconds(claim_after, "claim_after")
        self._streams = _Streams(store)
        self._ready = False
        self._backlog: dict[str, str] = {}  # per stream: the next pending id to read
        self._new = dict.fromkeys(self._streams.names, ">")
        self._buffer: list[Event] = []  # read from the server, not yet handed out

    async def setup(self) -> None:
        """Create the group on every stream that lacks it, and claim what
        dead consumers left (with `claim_after`). Idempotent."""
        await self._ensure_groups(self.start)
        if self.claim_after is not None:
            await self._claim(int(self.claim_after * 1000))
        self._backlog = dict.fromkeys(self._streams.names, "0")
        self._ready = True

    async def _ensure_groups(self, start: Literal["new", "all"]) -> None:
        """Make the group on every stream that lacks it: at the stream's end
        (``new``), or just before its first entry (``all``), so that entries
        trimmed before the group existed never count as lost to it."""
        names = self._streams.names
        if start == "new":
            positions = ["$"] * len(names)
        else:
            firsts = await self._streams.run([("XRANGE", n, "-", "+", "COUNT", 1) for n in names])
            positions = [
                f"0-{_seq(found[0][0]) - 1}" if found else "0"
                for found in (_check(r, "reading the first events") for r in firsts)
            ]
        commands = [
            ("XGROUP", "CREATE", name, self.group, position, "MKSTREAM")
            for name, position in zip(names, positions, strict=True)
        ]
        for reply in await self._streams.run(commands):
            if isinstance(reply, rx.ResponseError) and "BUSYGROUP" in str(reply):
                continue  # the group is there already
            _check(reply, "creating the consumer group")

    async def _claim(self, min_idle_ms: int) -> None:
        cursors = dict.fromkeys(self._streams.names, "0-0")
        while cursors:
            names = list(cursors)
            replies = await self._streams.run(
                [
                    ("XAUTOCLAIM", n, self.group, self.consumer, min_idle_ms, cursors[n])
                    for n in names
                ]
            )
            for name, reply in zip(names, replies, strict=True):
                cursor = _text(_check(reply, "claiming pending events")[0])
                if cursor == "0-0":
                    del cursors[name]
                else:
                    cursors[name] = cursor

    async def read(self) -> list[Event]:
        """The next batch: this consumer's unacknowledged events first, then
        new ones, waiting up to `block` for some; at most `count` events,
        oldest first. Empty if none came."""
        if not self._ready:
            await self.setup()
        attempt = 0
        while not self._buffer:
            try:
                self._buffer = await self._read()
                break
            except _Transient as exc:
                # What the failed read delivered is pending but unseen: read
                # this consumer's pending entries again before new ones.
                self._backlog = dict.fromkeys(self._streams.names, "0")
                if attempt >= self._streams.store.retries + _MORE_TRIES:
                    raise exc.error from exc.__cause__
                attempt += 1
                await anyio.sleep(0.1 * attempt)
            except BackendError as exc:
                if not str(exc.__cause__).startswith("NOGROUP"):
                    raise
                # A stream was deleted (FLUSHALL, a lost shard): everything a
                # new stream holds is new to the group.
                await self._ensure_groups("all")
        # A read may bring up to `count` events from each stream; hand them
        # out `count` at a time (they are pending until acknowledged anyway).
        batch, self._buffer = self._buffer[: self.count], self._buffer[self.count :]
        return batch

    async def _read(self) -> list[Event]:
        streams = self._streams
        mine = partial(streams.read, group=self.group, consumer=self.consumer, count=self.count)
        if self._backlog:
            backlog = self._backlog
            gone: list[tuple[str, str]] = []
            skipped: list[str] = []
            events = await mine(backlog, block_ms=None, gone=gone, skipped=skipped)
            # A stream whose slot is moving stays in the backlog: its pending
            # entries are read once it can be read.
            keep = {e.stream for e in events} | {name for name, _ in gone} | set(skipped)
            for name in list(backlog):
                if name not in keep:
                    del backlog[name]  # nothing (more) pending there
            for name, entry_id in gone:
                backlog[name] = entry_id
            for e in events:
                backlog[e.stream] = e.id
            if gone:  # trimmed away: nothing left to deliver, nothing to wait for
                await streams.run([("XACK", n, self.group, i) for n, i in gone])
            if events:
                return events
        block_ms = int(self.block * 1000)
        events = await mine(self._new, block_ms=block_ms)
        if not events and streams.cluster:
            await anyio.sleep(self.block)
        return events

    async def status(self) -> GroupStatus:
        """How far behind the group is, and whether it lost events to the
        streams' cap (one pipelined XINFO per stream: for monitoring, not
        for every read)."""
        names = self._streams.names
        commands: list[tuple[Any, ...]] = []
        for name in names:
            commands += [("XINFO", "STREAM", name), ("XINFO", "GROUPS", name)]
        replies = await self._streams.run(commands)
        pending, undelivered, lost = 0, 0, 0
        lost_streams: list[str] = []
        unknown = False
        for i, name in enumerate(names):
            stream, groups = replies[2 * i], replies[2 * i + 1]
            if isinstance(stream, rx.ResponseError) and "no such key" in str(stream):
                continue  # nothing was ever written there
            info = _fields(_check(stream, "reading stream information"))
            mine = [
                g
                for g in map(_fields, _check(groups, "reading group information"))
                if _text(g["name"]) == self.group
            ]
            if not mine:
                undelivered += int(info["length"])  # the group is not made there yet
                continue
            pending += int(mine[0]["pending"])
            if _id(info.get("max-deleted-entry-id") or "0-0") != (0, 0):
                unknown = True  # entries were deleted by hand: numbers have gaps
                continue
            behind, trimmed = _standing(info, mine[0])
            undelivered += behind
            if trimmed:
                lost += trimmed
                lost_streams.append(name)
        return GroupStatus(
            group=self.group,
            pending=pending,
            undelivered=None if unknown else undelivered,
            lost=None if unknown else lost,
            lost_streams=tuple(lost_streams),
        )

    async def ack(self, *events: Event) -> int:
        """Acknowledge events: they will not be delivered again. Returns how
        many were pending."""
        by_stream: dict[str, list[str]] = {}
        for e in events:
            by_stream.setdefault(e.stream, []).append(e.id)
        if not by_stream:
            return 0
        replies = await self._streams.run(
            [("XACK", name, self.group, *ids) for name, ids in by_stream.items()]
        )
        return sum(int(_check(r, "acknowledging events")) for r in replies)

    def __aiter__(self) -> AsyncIterator[Event]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Event]:
        while True:
            for event in await self.read():
                yield event
