"""A prefix's event streams and how to read them: one blocking command on
one server, one script call per node on a cluster."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any, Final

import anyio
from redis import exceptions as rx
from redis.asyncio.cluster import RedisCluster

from sessionkit import _keys as keys
from sessionkit import _transport
from sessionkit._scripts import Scripts, read_events_args
from sessionkit.errors import BackendError, BackendUnavailable, SessionKitError
from sessionkit.events._entries import (
    Event,
    _entries,
    _entry_key,
    _text,
)
from sessionkit.store import SessionStore

#: How long a read may take beyond the time it asks the server to wait.
_ANSWER_WITHIN: Final = 5.0


def _key(command: tuple[Any, ...]) -> str:
    """The stream a command is about (what routes it on a cluster)."""
    return str(command[2] if command[0] in ("XINFO", "XGROUP") else command[1])


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
#: the pause (growing) between the later tries: about half a second in all,
#: as a slot that just moved can take that long to answer on a busy machine.
_SKIP_TRIES = 6
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
