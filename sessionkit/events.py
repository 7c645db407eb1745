"""Session events: read what happened to sessions, without loss.

Every change the store makes (a session created, deleted, all of a user's
deleted, evicted by ``max_sessions_per_user``, access groups added or
removed) appends one entry to a Redis Stream *inside the Lua script that
makes the change*, so an event exists if and only if its change does (a
change to more sessions than one 64 KiB entry holds appends several). A
change that touches no session (deleting an unknown token, adding a group
every session already has) writes none. Expiry writes none either: a
session's ``expires_at`` says when it ends, so a consumer that needs to act
then can schedule it.

Layout and trade-off. A script may only touch keys in its user's hash slot,
so each bucket (see `sessionkit.keys`) has its own stream,
``<prefix>:{<tag>}:events``: 1,024 streams per prefix. Events of one user
are in one stream, in order; events of different users are ordered by time
only as far as the server clock goes (a batch is sorted by entry id). On one
server a consumer reads all streams with one blocking command; on a cluster
it calls one script per node that reads that node's streams (the one script
flagged ``allow-cross-slot-keys``), and polls. Each
stream is capped (``XADD MAXLEN ~``, the store's ``events_maxlen``): a
consumer that stays away longer than the cap lasts misses the oldest events.

`EventConsumer` reads as one consumer of a Redis consumer group: each event
goes to one consumer of the group, stays pending until acknowledged, and a
consumer that restarts under the same name first gets back what it had not
acknowledged, then everything that happened while it was away. `tail`
follows the streams without a group (nothing to acknowledge, nothing kept).
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any, Final, Literal

import anyio
import msgspec
from redis import exceptions as rx
from redis.asyncio.cluster import RedisCluster

from sessionkit import _transport, keys
from sessionkit.errors import BackendError, BackendUnavailable, SessionKitError, ValidationError
from sessionkit.scripts import Scripts, read_events_args
from sessionkit.store import SessionStore

EventType = Literal[
    "created", "deleted", "all_deleted", "evicted", "groups_added", "groups_removed"
]
EVENT_TYPES: Final = frozenset(EventType.__args__)  # type: ignore[attr-defined]

_MAX_NAME = 200

#: How long a read may take beyond the time it asks the server to wait.
_ANSWER_WITHIN: Final = 5.0


def _key(command: tuple[Any, ...]) -> str:
    """The stream a command is about (what routes it on a cluster)."""
    return str(command[2] if command[0] in ("XINFO", "XGROUP") else command[1])


class Event(msgspec.Struct, frozen=True, kw_only=True):
    """One change to one user's sessions.

    `session_ids` are public session ids (`Session.id`), never tokens;
    `groups` are the access groups the change was asked for (created with,
    added, removed); `at` is the server time of the change, taken from the
    stream entry id. `id` and `stream` name the entry, for acknowledging it.
    """

    type: str
    user_id: str
    session_ids: tuple[str, ...]
    groups: tuple[str, ...]
    at: datetime
    id: str
    stream: str


class GroupStatus(msgspec.Struct, frozen=True, kw_only=True):
    """Where a consumer group stands, over every stream of a prefix.

    `pending`: delivered to a consumer, not yet acknowledged. `undelivered`:
    still in the streams, not yet delivered to the group. `lost`: events the
    group fell so far behind on (more than ``events_maxlen``) that the
    streams trimmed them before it read them; `lost_streams` names those
    streams. Counts are None where a stream cannot tell (entries deleted in
    its middle by hand).
    """

    group: str
    pending: int
    undelivered: int | None
    lost: int | None
    lost_streams: tuple[str, ...]


def _fields(reply: Any) -> dict[str, Any]:
    """An XINFO reply as a dict with text keys (redis-py gives a flat list or a dict)."""
    if isinstance(reply, list):
        reply = dict(zip(reply[::2], reply[1::2], strict=True))
    return {_text(k): v for k, v in reply.items()}


def _seq(entry_id: bytes | str) -> int:
    """An entry's number in its stream: sessionkit writes ids ``<ms>-<n>``
    with n counting the stream's entries from 1 (see ``lua/_lib.lua``)."""
    return _id(entry_id)[1]


def _standing(stream: dict[str, Any], group: dict[str, Any]) -> tuple[int, int]:
    """(undelivered, lost) of one group on one stream, from entry numbers
    alone: exact on every server, whatever the group's ``entries-read``
    says (Redis 7.0 miscounts it once a read skips trimmed entries; it is
    null for a group that has not read yet)."""
    position = _seq(group["last-delivered-id"])
    last = _seq(stream["last-generated-id"])
    first_entry = stream.get("first-entry")
    first = _seq(first_entry[0]) if first_entry else last + 1
    return last - max(position, first - 1), max(0, first - 1 - position)


def _id(value: bytes | str) -> tuple[int, int]:
    """A stream entry id as numbers, for ordering: ``"1700000000000-3"`` → (1700000000000, 3)."""
    ms, _, seq = _text(value).partition("-")
    return int(ms), int(seq or 0)


def _text(value: bytes | str) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


def _event(stream: str, entry_id: str, fields: dict[Any, Any]) -> Event:
    f = {_text(k): _text(v) for k, v in fields.items()}
    try:
        groups = tuple(msgspec.json.decode(f.get("groups") or "[]", type=list[str]))
    except msgspec.DecodeError:
        groups = ()
    return Event(
        type=f.get("type", ""),
        user_id=f.get("user", ""),
        session_ids=tuple(f.get("sessions", "").split()),
        groups=groups,
        at=datetime.fromtimestamp(_id(entry_id)[0] / 1000, UTC),
        id=entry_id,
        stream=stream,
    )


def _entry_key(event: Event) -> tuple[int, int]:
    return _id(event.id)


def _name(value: object, what: str) -> str:
    if not isinstance(value, str) or not value or len(value) > _MAX_NAME:
        raise ValidationError(
            f"{what} must be a non-empty text of at most {_MAX_NAME} characters, got {value!r}",
            details={"parameter": what},
        )
    return value


def _seconds(value: float | timedelta, what: str) -> float:
    seconds = value.total_seconds() if isinstance(value, timedelta) else value
    if (
        isinstance(seconds, bool)
        or not isinstance(seconds, (int, float))
        or not (0 < seconds < math.inf)
    ):
        raise ValidationError(
            f"{what} must be a positive number of seconds or a timedelta, got {value!r}",
            details={"parameter": what},
        )
    return float(seconds)


class _Streams:
    """A prefix's event streams, and how to read them in as few round trips
    as the server allows: one (blocking) command on one server; on a
    cluster, one call of the ``read_events`` script per node, which reads
    that node's streams, and polling."""

    def __init__(self, store: SessionStore) -> None:
        self.store = store
        self.transport = store.transport
        self.client = store.client
        self.cluster = isinstance(self.client, RedisCluster)
        self.names = keys.event_streams(store.prefix)

    async def run(self, commands: Sequence[tuple[Any, ...]]) -> list[Any]:
        """Send commands at once (one batch per node); each reply, or the error
        it got (see `Transport.commands`). Every command sent this way is
        safe to repeat: the transport repeats it after a broken connection
        or a slot move."""
        return await self.transport.commands("events", [(_key(c), c) for c in commands])

    async def read(
        self,
        ids: dict[str, str],
        *,
        group: str = "",
        consumer: str = "",
        count: int,
        block_ms: int | None,
        gone: list[tuple[str, str]] | None = None,
        skipped: list[str] | None = None,
    ) -> list[Event]:
        """Entries after `ids` (per stream; ``>`` or a pending id with a
        group), oldest first; on one server, waiting up to `block_ms` for some.
        On a cluster, streams whose slot is still moving after a few tries are
        left unread (nothing delivered) and added to `skipped`.
        A read that may have half happened (a broken connection, a timeout,
        slots that moved, a client fault) raises `_Transient`: with a group,
        entries it delivered are pending, unseen, until read again."""
        names = list(ids)
        try:
            await self.transport.ready()
            if isinstance(self.client, RedisCluster):
                reply, unread = await self._read_nodes(self.client, ids, group, consumer, count)
                if skipped is not None:
                    skipped += unread
            else:
                head: tuple[Any, ...] = (
                    ("XREADGROUP", "GROUP", group, consumer) if group else ("XREAD",)
                )
                head += ("COUNT", count)
                if block_ms is not None:
                    head += ("BLOCK", block_ms)
                reply = await self.transport.blocking(
                    "events",
                    (block_ms or 0) / 1000 + _ANSWER_WITHIN,
                    *head,
                    "STREAMS",
                    *names,
                    *(ids[n] for n in names),
                )
        except BackendUnavailable as exc:
            raise _Transient(exc) from exc.__cause__
        except rx.RedisError as exc:  # a cluster node's reply
            fault = _transport.classify(exc)
            if fault in (_transport.Fault.BROKEN, _transport.Fault.TIMEOUT):
                raise _Transient(_transport.error(exc, "events")) from exc
            error = BackendError(
                f"the session server refused reading events: {exc}",
                details={"operation": "events"},
            )
            if not _moving(str(exc)):
                raise error from exc
            # Slots moved since the client last looked: reload the topology.
            await self.transport.reload()
            raise _Transient(error) from exc
        events = _entries(reply, gone)
        events.sort(key=_entry_key)
        return events

    async def _read_nodes(
        self, client: RedisCluster, ids: dict[str, str], group: str, consumer: str, count: int
    ) -> tuple[list[Any], list[str]]:
        """Entries of every stream in `ids`, one script call per node, and the
        streams no node could read. A stream whose slot moved is read again on
        its new node after a topology reload, so an empty answer means no
        entries rather than a stale slot map; one caught mid-move (no node
        serves it until the move ends) is tried a few times, then left out."""
        script = Scripts.read_events

        async def on(node: Any, names: list[str]) -> Any:
            args = read_events_args(group, consumer, count, {n: ids[n] for n in names})
            return await self.transport.on_node("events", node, script, *args)

        entries: list[Any] = []
        todo = list(ids)
        for attempt in range(_SKIP_TRIES):
            if attempt:
                # Those slots moved: reload the topology, read them on their new node.
                await self.transport.reload()
                await anyio.sleep(_SKIP_WAIT * (attempt - 1))
            by_node: dict[str, tuple[Any, list[str]]] = {}
            unserved: list[str] = []
            for name in todo:
                node = client.get_node_from_key(name)
                if node is None:
                    unserved.append(name)
                else:
                    by_node.setdefault(node.name, (node, []))[1].append(name)
            # Every call runs to its end before any failure is raised, so no
            # call left running delivers entries after the caller re-reads
            # its pending ones.
            outcomes = await asyncio.gather(
                *(on(n, names) for n, names in by_node.values()), return_exceptions=True
            )
            replies: list[Any] = []
            for outcome in outcomes:
                if isinstance(outcome, BaseException):
                    raise outcome
                replies.append(outcome)
            entries += [entry for found, _ in replies for entry in found]
            todo = unserved + [_text(name) for _, skipped in replies for name in skipped]
            if not todo:
                break
        return entries, todo


class _Transient(Exception):
    """A read that failed in a way worth repeating; `error` is what to raise
    if repeating does not help."""

    def __init__(self, error: SessionKitError) -> None:
        super().__init__(error.message)
        self.error = error


#: Reads repeat a failed read the store's `retries` and this many more times:
#: a slot move or a failover can take a few tries to settle.
_MORE_TRIES = 3

#: How many times a cluster read tries a stream whose slot is moving, and
#: the pause (growing) between the later tries.
_SKIP_TRIES = 4
_SKIP_WAIT = 0.05

#: Errors of a cluster whose slots are moving (the read goes on after a
#: topology reload): the server's error codes, and what a script says when
#: a key it was given is not on its node.
_MOVING_CODES = frozenset({"MOVED", "ASK", "TRYAGAIN", "CLUSTERDOWN"})
_MOVING_PHRASES = ("non local key", "not served")


def _moving(message: str) -> bool:
    """Whether an error says that slots are moving. By its code, not by a
    substring: a NOGROUP error quotes key and group names, which may hold
    any word."""
    code = message.split(" ", 1)[0]
    if code == "NOGROUP":
        return False
    return code in _MOVING_CODES or any(p in message for p in _MOVING_PHRASES)


def _entries(reply: Any, gone: list[tuple[str, str]] | None = None) -> list[Event]:
    """Events out of an XREAD/XREADGROUP reply (a list, or redis-py's RESP3
    map). Pending entries the stream no longer holds (trimmed before they
    were acknowledged) come with no fields: they are added to `gone`."""
    if not reply:
        return []
    pairs = reply.items() if isinstance(reply, dict) else reply
    out: list[Event] = []
    for stream, entries in pairs:
        name = _text(stream)
        if len(entries) == 1 and isinstance(entries[0], list):
            inner = entries[0]
            if not inner or isinstance(inner[0], tuple):
                entries = inner  # redis-py's RESP3 shape wraps the entries once more
        for entry_id, fields in entries:
            if not fields:
                if gone is not None and entry_id is not None:
                    gone.append((name, _text(entry_id)))
                continue
            if not isinstance(fields, dict):  # a script's reply: a flat list
                fields = dict(zip(fields[::2], fields[1::2], strict=True))
            out.append(_event(name, _text(entry_id), fields))
    return out


def _check(reply: Any, what: str) -> Any:
    """A reply of `_Streams.run`, or the typed error it stands for."""
    if isinstance(reply, SessionKitError):
        raise reply
    if isinstance(reply, Exception):
        raise BackendError(
            f"the session server refused {what}: {reply}", details={"operation": "events"}
        ) from reply
    return reply


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


async def tail(
    store: SessionStore, *, since: datetime | None = None, block: float | timedelta = 1.0
) -> AsyncGenerator[Event, None]:
    """Follow every event stream of the store's prefix from `since` (default:
    now; a naive datetime is UTC), without a consumer group: nothing is acknowledged or remembered;
    `aclose()` it when done. For watching; use `EventConsumer` for work that
    must not miss events."""
    wait = _seconds(block, "block")
    streams = _Streams(store)
    if since is None:
        # Each stream's last entry now, not the clock: an entry written in the
        # same millisecond just before the start is not "from now".
        replies = await streams.run([("XREVRANGE", n, "+", "-", "COUNT", 1) for n in streams.names])
        ends = [_check(r, "reading the last events") for r in replies]
        last = {
            n: _text(end[0][0]) if end else "0-0"
            for n, end in zip(streams.names, ends, strict=True)
        }
    else:
        if since.tzinfo is None:
            since = since.replace(tzinfo=UTC)  # as the CLI reads times: UTC
        start_ms = int(since.timestamp() * 1000)
        last = dict.fromkeys(streams.names, f"{max(start_ms - 1, 0)}-{2**64 - 1}")
    attempt = 0
    while True:
        try:
            events = await streams.read(last, count=100, block_ms=int(wait * 1000))
            attempt = 0
        except _Transient as exc:
            if attempt >= store.retries + _MORE_TRIES:
                raise exc.error from exc.__cause__
            attempt += 1
            await anyio.sleep(0.1 * attempt)
            continue
        if not events and streams.cluster:
            await anyio.sleep(wait)
        for e in events:
            last[e.stream] = e.id
            yield e


__all__ = ["EVENT_TYPES", "Event", "EventConsumer", "EventType", "GroupStatus", "tail"]
