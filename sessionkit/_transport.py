"""The transport: how every Redis call of sessionkit reaches the server.

The store's scripts and the event consumer's commands all go through one
`Transport`. It owns three things and nothing more:

* **Batching.** A call made while nothing else is in flight (on the
  server, or on any node of a cluster) is written at once, on the calling
  task. Calls that overlap are queued, each on its lane (the server, or the
  node that serves its slot); the first queued caller leads: it waits one
  loop tick for the calls of the same tick (and, under load, for a free
  slot on the lane: `MAX_IN_FLIGHT` exchanges out at once on a server, one
  on a cluster node, so batches grow with the load), writes them all in
  one buffer on one pooled connection, and reads every reply out of
  hiredis in bulk. No task and no coroutine per reply. When a
  server's lane has a slot free and its queue holds half the lane's calls
  (at least `FLUSH_AT`), the caller that filled it sends it at once: the
  server then works on one batch while this process handles the replies
  of the other, instead of the two taking turns.
* **Errors.** One table, `classify`, says what each redis-py exception means
  (a broken connection, a slot move, a timeout, a refusal, a lost script)
  and `error` turns it into ours.
* **Retries.** `Transport.call` repeats a call only for faults after which
  repeating is safe and useful: a broken connection (every script is safe to
  run twice), a slot that moved, a cluster mid-failover, a script the server
  lost. A timeout is not repeated (the caller hears at once); a refusal or a
  programming error never is.

Connections, AUTH, TLS, pools and the cluster's slot table stay redis-py's;
the few internals the batch write and read need are pinned in `_redispy`.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import enum
import math
from collections.abc import Callable, Sequence
from typing import Any, Final

import anyio
import msgspec
import redis.asyncio as aioredis
from redis import exceptions as rx
from redis.asyncio.cluster import ClusterNode, RedisCluster

from sessionkit import _redispy
from sessionkit._keys import slot_of
from sessionkit._resp import as_eval, pack, pack_script, unpack
from sessionkit._scripts import Call, Script
from sessionkit.errors import BackendError, BackendTimeout, BackendUnavailable, SessionKitError

#: Most commands written in one batch.
MAX_BATCH: Final = 512

#: Exchanges in flight at once on one server's lane: one being read while
#: the next is written. A cluster node's lane has one: the process's other
#: lanes keep it busy meanwhile, and each node's batches are then twice as
#: large (a write, a system call, is the dearest step of a call).
MAX_IN_FLIGHT: Final = 2

#: The fewest queued calls that go out before the end of the loop tick
#: (when fewer than `MAX_IN_FLIGHT` exchanges are out on a server's lane):
#: half the lane's calls, but never batches smaller than this, whose write
#: would cost more than the wait.
FLUSH_AT: Final = 8

#: How many times a call follows MOVED / ASK before it gives up; from the
#: third MOVED on it pauses first, a little longer each time up to
#: MAX_BOUNCE_PAUSE (about three seconds in all).
MAX_REDIRECTS: Final = 16
MAX_BOUNCE_PAUSE: Final = 0.25

#: Retries of a cluster that is moving slots or failing over (TRYAGAIN,
#: CLUSTERDOWN, a replica's READONLY, a slot no node serves), with a growing
#: pause: about two seconds in all, beyond the store's `retries`.
TOPOLOGY_TRIES: Final = 8
TOPOLOGY_PAUSE: Final = 0.05

#: No reply yet: the call is still to be sent.
_UNSENT: Final = object()


# -- the error table ------------------------------------------------------


class Fault(enum.Enum):
    BROKEN = "broken"  # the connection broke: repeat on a fresh one
    TIMEOUT = "timeout"  # no answer in time: not repeated
    MOVED = "moved"  # the slot lives on another node now
    ASK = "ask"  # the slot is being moved: ask its next node once
    MOVING = "moving"  # a cluster mid-move or mid-failover: wait, reload, repeat
    NOSCRIPT = "noscript"  # the server lost its scripts: EVAL the source
    REFUSED = "refused"  # the server refused the command: not repeated


#: redis-py's typed exceptions, most specific first.
_TABLE: Final[tuple[tuple[type[BaseException] | tuple[type[BaseException], ...], Fault], ...]] = (
    (rx.NoScriptError, Fault.NOSCRIPT),
    (rx.MovedError, Fault.MOVED),  # a subclass of AskError
    (rx.AskError, Fault.ASK),
    (
        (
            rx.TryAgainError,
            rx.ClusterDownError,  # MasterDownError too
            rx.SlotNotCoveredError,
            rx.ReadOnlyError,  # a connection to a primary that became a replica
        ),
        Fault.MOVING,
    ),
    ((rx.TimeoutError, builtins.TimeoutError), Fault.TIMEOUT),
    # A cluster client that cannot reach any node (its other errors are above).
    (rx.RedisClusterException, Fault.BROKEN),
    ((rx.ConnectionError, ConnectionError, OSError, rx.MaxConnectionsError), Fault.BROKEN),
    (rx.RedisError, Fault.REFUSED),
)


def classify(exc: BaseException) -> Fault | None:
    """What a redis-py exception means; None for anything that is not a
    Redis fault (a programming error: raised as it is)."""
    for kinds, fault in _TABLE:
        if isinstance(exc, kinds):
            return fault
    return None


def error(exc: BaseException, operation: str) -> SessionKitError:
    """Our error for a Redis fault that retrying did not cure."""
    fault = classify(exc)
    if fault is Fault.REFUSED or fault is Fault.NOSCRIPT:
        return BackendError(
            f"the session server refused {operation}: {exc}", details={"operation": operation}
        )
    if fault is Fault.TIMEOUT:
        return BackendTimeout(
            f"the session server timed out during {operation}: {exc}",
            details={"operation": operation},
        )
    return BackendUnavailable(
        f"the session server is unreachable during {operation}: {exc}",
        details={"operation": operation},
    )


class _Orphaned(rx.ConnectionError):
    """The task leading a batch was cancelled while the batch was out: its
    connection was closed, and the calls in it and queued behind it go out
    again at once (every call is safe to repeat)."""


class _Lost(rx.ConnectionError):
    """The connection failed under a batch in a way redis-py did not type
    (it was closed by a topology reload, say): the batch's unread calls are
    treated as on a broken connection."""


# -- calls and lanes ------------------------------------------------------


class _Call(msgspec.Struct):
    """One call on a lane (a msgspec struct: made in C, on every call's path)."""

    payload: bytes
    #: Where a queued call's reply goes (a call sent at once has none).
    future: asyncio.Future[Any] | None = None


class _Lane:
    """One server, or one cluster node: its queue of overlapping calls, the
    count of exchanges in flight on it, and the leader waiting to send."""

    __slots__ = ("busy", "calls", "loop", "most", "queue", "waiters")

    def __init__(self, most: int = MAX_IN_FLIGHT) -> None:
        self.busy = 0
        #: Exchanges in flight at once, at most.
        self.most = most
        #: Calls queued or in a batch in flight (the lane's concurrency).
        self.calls = 0
        self.queue: list[_Call] = []
        self.waiters: list[asyncio.Future[None]] = []
        #: The loop of the caller that started the queue, which every caller
        #: queued behind it shares: `asyncio.get_running_loop()` makes a
        #: system call (getpid) each time on Python 3.11, 8 % of a queued
        #: resolve's CPU when every call asked it.
        self.loop: asyncio.AbstractEventLoop | None = None

    def running_loop(self) -> asyncio.AbstractEventLoop:
        """The loop a caller joining the queue runs on."""
        loop = self.loop
        if not self.queue or loop is None or not loop.is_running():
            loop = self.loop = asyncio.get_running_loop()
        return loop

    def wake(self) -> None:
        """An exchange ended: a waiting leader may send now."""
        waiters, self.waiters = self.waiters, []
        for w in waiters:
            if not w.done():
                w.set_result(None)


class _Connections:
    """Where a lane gets a connection and gives it back: `take` and `keep`
    without waiting when they can (the common case, no coroutine), `get`
    and `put` when they cannot."""

    #: The time limits of the exchanges on these connections.
    watch: _Watch | None = None

    def take(self) -> Any | None:
        return None

    async def get(self) -> Any:
        raise NotImplementedError

    def keep(self, conn: Any) -> bool:
        return False

    async def put(self, conn: Any) -> None:
        raise NotImplementedError


class _PoolConnections(_Connections):
    """A redis-py pool, with the connections given back last kept at hand,
    one per exchange in flight (`MAX_IN_FLIGHT`), never more than half the
    pool: a lane reuses them without the pool's condition, lock, timeout
    and readiness checks, which cost a batch more than its write. They are
    still the pool's, counted as in use, and closed with the pool."""

    def __init__(self, pool: Any, most: int = MAX_IN_FLIGHT) -> None:
        self.pool = pool
        self.most = max(1, min(most, _redispy.pool_size(pool) // 2))
        self.spares: list[Any] = []

    def take(self) -> Any | None:
        spares = self.spares
        if spares and spares[-1].is_connected:
            return spares.pop()
        return None

    async def get(self) -> Any:
        spares = self.spares
        while spares:
            conn = spares.pop()
            if conn.is_connected:
                return conn
            await _redispy.release(self.pool, conn)  # kept, but its connection broke
        return await _redispy.acquire(self.pool)

    def keep(self, conn: Any) -> bool:
        if len(self.spares) < self.most and conn.is_connected:
            self.spares.append(conn)
            return True
        return False

    async def put(self, conn: Any) -> None:
        if not self.keep(conn):
            await _redispy.release(self.pool, conn)

    async def drop(self) -> None:
        """Give the spares back and close the pool's idle connections."""
        spares, self.spares = self.spares, []
        for conn in spares:
            await _redispy.release(self.pool, conn)
        await _redispy.drop_idle(self.pool)


class _NodeConnections(_Connections):
    def __init__(self, node: ClusterNode) -> None:
        self.node = node

    def take(self) -> Any | None:
        try:
            return _redispy.node_acquire(self.node)
        except rx.MaxConnectionsError:
            return None

    async def get(self) -> Any:
        for _ in range(100):
            conn = self.take()
            if conn is not None:
                return conn
            await asyncio.sleep(0.01)  # all in use: one comes back soon
        return _redispy.node_acquire(self.node)

    def keep(self, conn: Any) -> bool:
        _redispy.node_release(self.node, conn)
        return True

    async def put(self, conn: Any) -> None:
        self.keep(conn)


class _Watch:
    """The time limits of one lane's exchanges (each a `_Deadline`), checked
    by one timer while any exchange is in flight, every `1 / CHECKS` of the
    limit. A timer of each exchange's own (made, pushed on the loop's heap
    of timers, cancelled) cost a resolve 8 % of its client instructions at
    c = 1, and about 4 % of its CPU at c = 50. An exchange that gets no
    reply for its limit is stopped at most an eighth of the limit later."""

    CHECKS: Final = 8

    __slots__ = ("deadlines", "handle", "limit", "loop")

    def __init__(self, loop: asyncio.AbstractEventLoop, limit: float) -> None:
        self.loop = loop
        self.limit = limit
        self.deadlines: set[_Deadline] = set()
        self.handle: asyncio.TimerHandle | None = None

    def start(self, task: asyncio.Task[Any]) -> _Deadline:
        """The deadline of an exchange starting now on `task`."""
        deadline = _Deadline(self, task)
        self.deadlines.add(deadline)
        if self.handle is None:
            self.handle = self.loop.call_at(deadline.last + self.limit / self.CHECKS, self._check)
        return deadline

    def _check(self) -> None:
        now = self.loop.time()
        late = now - self.limit
        for deadline in [d for d in self.deadlines if d.last <= late]:
            self.deadlines.discard(deadline)
            deadline.fire()
        self.handle = (
            self.loop.call_at(now + self.limit / self.CHECKS, self._check)
            if self.deadlines
            else None
        )


def _deadline(source: _Connections, conn: Any, limit: float) -> _Deadline:
    """The deadline of an exchange on `conn` starting now, on the running
    task, watched by `source`'s watch on the loop the connection runs on."""
    loop = _redispy.loop_of(conn)
    task = asyncio.current_task(loop)  # with the loop: no getpid
    if task is None:  # a connection made on a loop that has ended
        loop = asyncio.get_running_loop()
        task = asyncio.current_task(loop)
        assert task is not None
    watch = source.watch
    if watch is None or watch.loop is not loop or watch.limit != limit:
        watch = source.watch = _Watch(loop, limit)
    return watch.start(task)


class _Deadline:
    """The time limit of one exchange: each reply gets about `limit`
    seconds (see `_Watch`). An arriving reply only notes the time. When it
    runs out it cancels the task, and `expired` turns that cancellation
    into the timeout it was."""

    __slots__ = ("_cancelling", "_fired", "_task", "_watch", "last")

    def __init__(self, watch: _Watch, task: asyncio.Task[Any]) -> None:
        self._watch = watch
        self._task = task
        self._cancelling = task.cancelling()
        self.last = watch.loop.time()
        self._fired = False

    def progress(self) -> None:
        """A reply (or part of one) arrived."""
        self.last = self._watch.loop.time()

    def fire(self) -> None:
        self._fired = True
        self._task.cancel()

    def cancel(self) -> None:
        self._watch.deadlines.discard(self)

    def expired(self, exc: asyncio.CancelledError) -> BaseException:
        """What a cancellation during the exchange was: our timeout (as
        `TimeoutError`) if this deadline fired and nobody else cancelled the
        task meanwhile, else the cancellation itself."""
        if self._fired and self._task.uncancel() <= self._cancelling:
            timeout = builtins.TimeoutError()
            timeout.__cause__ = exc
            return timeout
        return exc


async def _exchange(source: _Connections, calls: Sequence[_Call]) -> list[Any]:
    """Write `calls` in one buffer on one connection and read their replies
    in order. A reply is the value or the error instance the server sent.
    If the connection fails, replies already read are returned and the rest
    are the failure (a `rx.ConnectionError` or `rx.TimeoutError`); the
    connection is then closed, since its stream is out of step."""
    replies: list[Any] = []
    conn = source.take()
    if conn is None:
        conn = await source.get()
    limit = _redispy.socket_timeout(conn)
    deadline = None if limit is None else _deadline(source, conn, limit)
    try:
        await _redispy.write(
            conn, calls[0].payload if len(calls) == 1 else b"".join(c.payload for c in calls)
        )
        parser = _redispy.hiredis_parser(conn)
        if parser is None:  # another parser: reply by reply
            for _ in calls:
                try:
                    replies.append(await conn.read_response(timeout=math.inf))
                except rx.ResponseError as exc:
                    replies.append(exc)
                if deadline is not None:
                    deadline.progress()
        else:
            want = len(calls)
            push = _redispy.PUSH
            incomplete = _redispy.INCOMPLETE
            gets = _redispy.replies_of(parser)
            while True:
                reply = gets()
                while reply is not incomplete:
                    if reply.__class__ is not push:  # a notice, not a reply
                        replies.append(reply)
                        want -= 1
                        if not want:
                            return replies
                    reply = gets()
                await _redispy.receive(parser)
                if deadline is not None:
                    deadline.progress()
        return replies
    except BaseException as exc:
        if deadline is not None:
            deadline.cancel()
            if isinstance(exc, asyncio.CancelledError):
                exc = deadline.expired(exc)
        with contextlib.suppress(Exception):
            await conn.disconnect()
        if isinstance(exc, asyncio.CancelledError | KeyboardInterrupt | SystemExit):
            raise exc
        failure: BaseException
        if isinstance(exc, builtins.TimeoutError):
            failure = rx.TimeoutError("timed out reading replies from the session server")
        elif classify(exc) in (Fault.BROKEN, Fault.TIMEOUT):
            failure = exc
        else:
            failure = _Lost(f"the connection failed: {exc!r}")
        failure.__cause__ = exc
        return replies + [failure] * (len(calls) - len(replies))
    finally:
        if deadline is not None:
            deadline.cancel()
        if not source.keep(conn):
            await source.put(conn)


async def _exchange_all(source: _Connections, payloads: Sequence[tuple[str, bytes]]) -> list[Any]:
    """`_exchange` in batches of `MAX_BATCH`; a batch that could not even
    get a connection gets that fault as every reply."""
    replies: list[Any] = []
    for start in range(0, len(payloads), MAX_BATCH):
        chunk = payloads[start : start + MAX_BATCH]
        try:
            replies += await _exchange(source, [_Call(p) for _, p in chunk])
        except Exception as exc:
            if classify(exc) is None:
                raise
            replies += [exc] * len(chunk)
    return replies


async def _send_on(
    lane: _Lane, source: _Connections, payload: bytes, batching: bool = True, alone: bool = True
) -> Any:
    """One call on `lane`: at once when the lane is idle and the call is
    `alone` (no call in flight on other lanes either), or batching is off;
    else in the next batch. Returns the reply (or the error instance) the
    call got."""
    if not batching:
        return (await _exchange(source, (_Call(payload),)))[0]
    if not lane.busy and not lane.queue and alone:
        lane.busy += 1
        try:
            return (await _exchange(source, (_Call(payload),)))[0]
        finally:
            lane.busy -= 1
            lane.wake()
    call = _Call(payload, lane.running_loop().create_future())
    queue = lane.queue
    queue.append(call)
    lane.calls += 1
    try:
        queued = len(queue)
        if queued == 1:
            await _lead(lane, source)
        elif (
            lane.most > 1
            and lane.busy < lane.most
            and queued >= FLUSH_AT
            and queued >= lane.calls >> 1
        ):
            # Half the calls out on the lane and a free slot: out now, on
            # this task, while the rest of this tick's callers are still
            # coming, so the server works while this process does. (Not on
            # a lane of one exchange, a cluster node's: the other nodes
            # keep the process busy, and its batch would only be smaller.)
            lane.queue = []
            await _send_batch(lane, source, queue)
        assert call.future is not None
        return await call.future
    finally:
        lane.calls -= 1


async def _lead(lane: _Lane, source: _Connections) -> None:
    """Send the queue this task started once fewer than `MAX_IN_FLIGHT`
    exchanges are out on the lane: the calls that came meanwhile (this
    tick's at least) go as one batch. Bounding what is in flight makes the
    batches as large as the load: a write (a system call that wakes the
    server) is the dearest step of a call. A caller that fills the queue
    while a slot is free (see `_send_on`) sends it itself; this task then
    has nothing left to do."""
    mine = lane.queue
    try:
        await asyncio.sleep(0)  # the other calls of this tick join the batch
        while lane.busy >= lane.most and lane.queue is mine:
            waiter = lane.running_loop().create_future()
            lane.waiters.append(waiter)
            await waiter
    except asyncio.CancelledError:
        if lane.queue is mine:
            # The calls queued behind this task go out again at once, under
            # a leader of their own.
            _fail(mine, _Orphaned("the call leading this batch was cancelled"))
            lane.queue = []
        raise
    if lane.queue is mine:
        lane.queue = []
        await _send_batch(lane, source, mine)


async def _send_batch(lane: _Lane, source: _Connections, pending: list[_Call]) -> None:
    """Send `pending` (in `MAX_BATCH` pieces) as one exchange in flight on
    the lane, and hand each call its reply."""
    lane.busy += 1
    try:
        for start in range(0, len(pending), MAX_BATCH):
            batch = pending[start : start + MAX_BATCH]
            try:
                replies = await _exchange(source, batch)
            except BaseException as exc:
                # Cancelled before its connection was in use, or could not
                # get one: the batch fails as a whole, and so do the calls
                # behind it, which this task was to send.
                failure: BaseException = exc
                if isinstance(exc, asyncio.CancelledError):
                    failure = _Orphaned("the call leading this batch was cancelled")
                _fail(pending[start:], failure)
                raise
            for c, reply in zip(batch, replies, strict=True):
                if c.future is not None and not c.future.done():
                    c.future.set_result(reply)
    finally:
        lane.busy -= 1
        lane.wake()


def _fail(calls: Sequence[_Call], failure: BaseException) -> None:
    for c in calls:
        if c.future is not None and not c.future.done():
            c.future.set_result(failure)


# -- the transport --------------------------------------------------------


class Transport:
    """Every Redis call of one store (and of its event consumers)."""

    def __init__(self, client: Any, *, batching: bool = True, retries: int = 2) -> None:
        self.client = client
        self.retries = retries
        self.cluster = isinstance(client, RedisCluster)
        self._single: tuple[_Lane, _PoolConnections] | None = None
        if not self.cluster and _redispy.is_redis_py_client(client):
            self._single = (_Lane(), _PoolConnections(client.connection_pool))
        self._batching = batching
        self._nodes: dict[str, tuple[_Lane, _NodeConnections]] = {}
        #: Each slot's lane, as long as the client's slot table is the one
        #: they were read from (`_routes_of`) and no slot moved since: a
        #: call's route is one lookup.
        self._routes: dict[int, tuple[_Lane, _NodeConnections]] = {}
        self._routes_of: object = None
        #: Calls in flight (sent or queued) on a cluster's lanes.
        self._cluster_calls = 0
        self._ready = not self.cluster
        self._init_lock = anyio.Lock()
        self._watchers: list[Callable[[], None]] = []

    # -- the public face --------------------------------------------------

    async def call(self, call: Call) -> Any:
        """Run a script (one EVALSHA, EVAL if the server lost it): its reply,
        or our typed error after the retries this fault allows."""
        # The first try is sent from here, and the retry loop is entered
        # only after a fault: the call every request makes is two
        # coroutine frames shallower (three on a cluster whose route to
        # the call's slot is known).
        try:
            # Positional arguments only: a call that unpacks or names them
            # goes through the interpreter's generic call (a tuple and a
            # dict built per call: 4 % of a resolve's client instructions).
            if (single := self._single) is not None:
                reply = await _send_on(single[0], single[1], call.payload, self._batching)
            elif self.cluster and (route := self._known_route(call.slot)) is not None:
                self._cluster_calls += 1
                try:
                    alone = self._cluster_calls == 1
                    reply = await _send_on(route[0], route[1], call.payload, self._batching, alone)
                finally:
                    self._cluster_calls -= 1
            else:
                reply = await self._send(call.slot, call.payload, None)
        except Exception as exc:  # no connection to be had: as a broken one
            if classify(exc) is None:
                raise
            reply = exc
        if not isinstance(reply, BaseException):
            return reply
        return await self._retrying(
            call.script.name, call.slot, call.payload, call.script, first=reply
        )

    async def command(self, operation: str, key: str | None, *parts: str | bytes | int) -> Any:
        """One plain command (safe to repeat), routed by `key` on a cluster."""
        return await self._retrying(operation, slot_of(key) if key else 0, pack(*parts), None)

    async def commands(
        self, operation: str, calls: Sequence[tuple[str, tuple[str | bytes | int, ...]]]
    ) -> list[Any]:
        """Several commands (each safe to repeat), each routed by its key: one
        batch per server (per node on a cluster). Each one's reply, or the
        error it got: the server's refusal as redis-py's exception (callers
        accept some, such as BUSYGROUP), any other fault as our error once
        the retry policy gives up. The failed part is repeated as a batch."""
        payloads = [(key, pack(*parts)) for key, parts in calls]
        replies: list[Any] = [None] * len(payloads)
        todo = list(range(len(payloads)))
        attempts = _Attempts(self, follow_ask=False)
        while todo:
            try:
                got = await self._send_many([payloads[i] for i in todo])
            except Exception as exc:
                if classify(exc) is None:
                    raise
                got = [exc] * len(todo)
            failed: list[tuple[int, BaseException]] = []
            for i, reply in zip(todo, got, strict=True):
                fault = classify(reply) if isinstance(reply, BaseException) else None
                if fault is Fault.ASK:  # a slot mid-move: this one alone, after ASKING
                    key, payload = payloads[i]
                    try:
                        replies[i] = await self._retrying(
                            operation, slot_of(key), payload, None, refusals=True
                        )
                    except SessionKitError as exc:
                        replies[i] = exc
                elif fault is not None and fault is not Fault.REFUSED:
                    failed.append((i, reply))
                else:
                    replies[i] = reply
            if not failed:
                break
            if not await attempts.again(failed[0][1]):
                for i, reply in failed:
                    replies[i] = error(reply, operation)
                break
            for _, reply in failed[1:]:
                if isinstance(reply, rx.MovedError):
                    await self.follow(reply)
            todo = [i for i, _ in failed]
        return replies

    async def _send_many(self, payloads: Sequence[tuple[str, bytes]]) -> list[Any]:
        """Each payload's reply, or the fault it met: a fault never takes
        the replies of other batches with it (a repeated XACK would count 0)."""
        if self._single is not None:
            return await _exchange_all(self._single[1], payloads)
        if not self.cluster:
            return [await self._send_plain(p) for _, p in payloads]
        await self.ready()
        out: list[Any] = [None] * len(payloads)
        by_node: dict[str, tuple[ClusterNode, list[int]]] = {}
        for i, (key, _) in enumerate(payloads):
            try:
                node = _redispy.node_for_slot(self.client, slot_of(key))
            except rx.RedisClusterException as exc:  # no node serves it now
                out[i] = exc
                continue
            by_node.setdefault(node.name, (node, []))[1].append(i)

        async def on(node: ClusterNode, indexes: list[int]) -> None:
            got = await _exchange_all(_NodeConnections(node), [payloads[i] for i in indexes])
            for i, reply in zip(indexes, got, strict=True):
                out[i] = reply

        await asyncio.gather(*(on(node, indexes) for node, indexes in by_node.values()))
        return out

    async def blocking(self, operation: str, wait: float, *parts: str | bytes | int) -> Any:
        """One command that may wait on the server (a blocking XREAD), on a
        connection of its own, never in a batch; one server only. Not
        repeated: the caller decides, since it may have delivered."""
        if self._single is None:  # fakeredis: nothing to wait for in a batch
            try:
                async with asyncio.timeout(wait):  # bounded here too
                    reply = await self._send_plain(pack(*parts))
            except builtins.TimeoutError as exc:
                raise error(rx.TimeoutError(f"no answer in {wait:g} s"), operation) from exc
            if isinstance(reply, BaseException):
                raise error(reply, operation) from reply
            return reply
        source = self._single[1]
        conn = await source.get()  # a spare first: a pool of one still works
        try:
            async with asyncio.timeout(wait):
                await _redispy.write(conn, pack(*parts))
                return await conn.read_response(timeout=math.inf)
        except BaseException as exc:
            with contextlib.suppress(Exception):
                await conn.disconnect()
            if isinstance(exc, builtins.TimeoutError):
                raise error(rx.TimeoutError(f"no answer in {wait:g} s"), operation) from exc
            if classify(exc) is not None:
                raise error(exc, operation) from exc
            raise
        finally:
            await source.put(conn)

    async def on_node(self, operation: str, node: ClusterNode, script: Script, *args: Any) -> Any:
        """Run a keyless script on one cluster node (the event reader's)."""
        source = _NodeConnections(node)
        payload = pack_script(script.sha, (), args)
        reply = (await _exchange(source, (_Call(payload),)))[0]
        if isinstance(reply, rx.NoScriptError):
            payload = as_eval(payload, script.sha, script.source)
            reply = (await _exchange(source, (_Call(payload),)))[0]
        if isinstance(reply, BaseException):
            raise reply
        return reply

    async def ready(self) -> None:
        """A cluster client must know the slots before calls go to nodes."""
        if not self._ready:
            async with self._init_lock:
                if not self._ready:
                    await _redispy.uncancelled(self.client.initialize())
                    self._ready = True

    async def reload(self) -> None:
        """Reload a cluster's slot table (after slots moved or a failover)."""
        if self.cluster:
            with contextlib.suppress(Exception):
                await _redispy.reload_topology(self.client)
            self._topology_changed()

    def watch_topology(self, callback: Callable[[], None]) -> None:
        """Call `callback` whenever this transport learns that a cluster's
        slots moved (the near cache then listens to the new primaries)."""
        self._watchers.append(callback)

    def _topology_changed(self) -> None:
        self._routes = {}
        for callback in self._watchers:
            callback()

    # -- retries: the one place -------------------------------------------

    async def _retrying(
        self,
        operation: str,
        slot: int,
        payload: bytes,
        script: Script | None,
        *,
        refusals: bool = False,
        first: Any = _UNSENT,
    ) -> Any:
        """Send one call until it gets a reply or the retry policy gives up;
        with `refusals`, the server's refusal is returned, not raised. An
        EVALSHA of `script` the server does not know goes again as its EVAL.
        `first`: what the call's first try got, if the caller made it."""
        attempts: _Attempts | None = None  # made on the first fault only
        ask: tuple[str, int] | None = None
        reply = first
        while True:
            if reply is _UNSENT:
                try:
                    reply = await self._send(slot, payload, ask)
                except Exception as exc:  # no connection to be had: as a broken one
                    if classify(exc) is None:
                        raise
                    reply = exc
            ask = None
            if not isinstance(reply, BaseException):
                return reply
            if classify(reply) is None:
                raise reply
            if isinstance(reply, rx.NoScriptError) and script is not None:
                payload = as_eval(payload, script.sha, script.source)
                script = None  # EVAL caches it; a second NOSCRIPT is a refusal
                reply = _UNSENT
                continue
            if refusals and classify(reply) is Fault.REFUSED:
                return reply
            if attempts is None:
                attempts = _Attempts(self, follow_ask=True)
            if not await attempts.again(reply):
                raise error(reply, operation) from reply
            if isinstance(reply, rx.AskError) and not isinstance(reply, rx.MovedError):
                ask = (reply.host, reply.port)
            reply = _UNSENT

    async def follow(self, moved: rx.MovedError) -> None:
        """Record a MOVED answer in the client's slot table."""
        with contextlib.suppress(Exception):
            await _redispy.follow_redirect(self.client, moved)
        self._topology_changed()

    async def _after_broken(self) -> None:
        """After a broken connection the idle ones are suspect too (a restart,
        a failover, CLIENT KILL): close them so the retry dials anew."""
        if self.cluster:
            await self.reload()
        elif self._single is not None:
            with contextlib.suppress(Exception):
                await self._single[1].drop()
        elif isinstance(self.client, aioredis.Redis):
            with contextlib.suppress(Exception):
                await _redispy.drop_idle(self.client.connection_pool)

    # -- routing ----------------------------------------------------------

    async def _send(self, slot: int, payload: bytes, ask: tuple[str, int] | None) -> Any:
        if self._single is not None:
            return await _send_on(*self._single, payload, batching=self._batching)
        if not self.cluster:
            return await self._send_plain(payload)
        if not self._ready:
            await self.ready()
        if ask is not None:
            node = _redispy.node_at(self.client, *ask)
            if node is None:
                raise rx.ConnectionError(f"no connection to {ask[0]}:{ask[1]} for ASK")
            replies = await _exchange(
                _NodeConnections(node), (_Call(pack("ASKING")), _Call(payload))
            )
            return replies[1]
        route = self._known_route(slot)
        if route is None:
            table = _redispy.slot_table(self.client)
            if table is not self._routes_of:  # redis-py read the cluster's slots anew
                self._routes, self._routes_of = {}, table
            route = self._routes[slot] = self._lane_for(slot)
        # A call goes out at once only when no other is in flight on any
        # node: under load, the caller that finds its node idle would
        # otherwise send its call alone, and the calls of its tick behind
        # it would wait for that exchange to end.
        self._cluster_calls += 1
        try:
            return await _send_on(
                *route, payload, batching=self._batching, alone=self._cluster_calls == 1
            )
        finally:
            self._cluster_calls -= 1

    def _known_route(self, slot: int) -> tuple[_Lane, _NodeConnections] | None:
        """The lane of the node serving `slot`, if it is known and the slot
        table it was read from is still the client's (see `_routes`)."""
        if _redispy.slot_table(self.client) is not self._routes_of:
            return None
        return self._routes.get(slot)

    def _lane_for(self, slot: int) -> tuple[_Lane, _NodeConnections]:
        """The lane of the node that serves `slot` now."""
        node = _redispy.node_for_slot(self.client, slot)
        lane = self._nodes.get(node.name)
        if lane is None or lane[1].node is not node:
            lane = self._nodes[node.name] = (_Lane(1), _NodeConnections(node))
        return lane

    async def _send_plain(self, payload: bytes) -> Any:
        """A client that is not redis-py's own (fakeredis) or with batching
        off: the command through the client's public API."""
        name, *args = unpack(payload)
        try:
            return await _redispy.uncancelled(self.client.execute_command(name.decode(), *args))
        except rx.ResponseError as exc:
            return exc


class _Attempts:
    """The retry policy, the one place that decides whether a failed call
    goes out again: a broken connection `retries` times (after closing the
    idle ones), MOVED and ASK up to `MAX_REDIRECTS` times (pausing once
    MOVED sends it back and forth), a cluster in
    motion `TOPOLOGY_TRIES` times with a growing pause and a topology
    reload, a batch orphaned by its cancelled leader at once. Never a
    timeout, a refusal or a programming error."""

    def __init__(self, transport: Transport, *, follow_ask: bool) -> None:
        self.transport = transport
        self.follow_ask = follow_ask
        self.broken = self.redirects = self.moving = self.orphaned = 0

    async def again(self, reply: BaseException) -> bool:
        """Whether to send the call again, having done what that needs."""
        t = self.transport
        fault = classify(reply)
        if isinstance(reply, _Orphaned) and self.orphaned < 3:
            self.orphaned += 1  # not this call's fault: out again at once
            return True
        if fault is Fault.BROKEN and self.broken < t.retries:
            self.broken += 1
            await t._after_broken()
            await anyio.sleep(0.05 * self.broken)
            return True
        if fault is Fault.MOVED and t.cluster and self.redirects < MAX_REDIRECTS:
            self.redirects += 1
            assert isinstance(reply, rx.MovedError)
            await t.follow(reply)
            if self.redirects > 2:
                # Sent back and forth: a move whose last step the nodes have
                # not all taken yet (the target still importing says MOVED
                # to the source, the source already says MOVED to the
                # target). Give them time rather than spend every redirect
                # in a few milliseconds.
                await anyio.sleep(min(TOPOLOGY_PAUSE * (self.redirects - 2), MAX_BOUNCE_PAUSE))
            return True
        if fault is Fault.ASK and t.cluster and self.follow_ask and self.redirects < MAX_REDIRECTS:
            self.redirects += 1
            return True
        moving = fault in (Fault.MOVING, Fault.BROKEN, Fault.ASK)
        if moving and t.cluster and self.moving < TOPOLOGY_TRIES:
            self.moving += 1
            await anyio.sleep(TOPOLOGY_PAUSE * self.moving)
            await t.reload()
            return True
        return False
