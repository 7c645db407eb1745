"""The redis-py internals the transport relies on, and nothing else.

redis-py makes the connections (address, AUTH, TLS, pools, cluster topology);
the transport only writes packed commands on a connection it was given and
reads the replies straight out of that connection's hiredis reader, without a
coroutine per reply. Those two steps touch attributes that are not public
API (and one of asyncio's: the loop a connection's stream reader runs on).
Every such use is a function here, and `check()` (run by
``tests/test_transport.py``) fails loudly, naming what changed, if a
redis-py upgrade moves any of them.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable
from typing import Any, Final, TypeVar

import hiredis
from redis._parsers.hiredis import NOT_ENOUGH_DATA, _AsyncHiredisParser
from redis.asyncio.client import Redis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.connection import AbstractConnection, ConnectionPool
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import AskError, MovedError

_T = TypeVar("_T")

#: What a hiredis reader returns when a reply is not complete yet.
INCOMPLETE: Final = NOT_ENOUGH_DATA

#: The type of a RESP3 push message (redis-py 8 speaks RESP3 by default; a
#: server may push, say, maintenance notices between replies).
PUSH: Final[type] = getattr(hiredis, "PushNotification", type(None))


def is_redis_py_client(client: object) -> bool:
    """A plain redis-py client over redis-py's own connection classes (not a
    cluster, not an in-process fake)."""
    if type(client) is not Redis:
        return False
    cls = client.connection_pool.connection_class
    return cls.__module__.startswith("redis.")


def hiredis_parser(conn: AbstractConnection) -> Any | None:
    """The connection's hiredis parser, once connected; None if it parses
    replies another way (then the transport reads reply by reply)."""
    parser = getattr(conn, "_parser", None)
    if type(parser) is _AsyncHiredisParser and parser._reader is not None:
        return parser
    return None


def replies_of(parser: Any) -> Callable[[], Any]:
    """What returns the next complete reply the parser has received, or
    `INCOMPLETE`, each time it is called (for one exchange: a reconnection
    makes a new reader). Error replies come back as exception instances
    (redis-py's typed errors)."""
    gets: Callable[[], Any] = parser._reader.gets
    return gets


async def receive(parser: Any) -> None:
    """Read what the socket has into the parser (ConnectionError at EOF)."""
    await parser.read_from_socket()


async def uncancelled(call: Awaitable[_T]) -> _T:
    """Await one of redis-py's own coroutines without losing a cancellation
    of the caller. On Python 3.11 redis-py bounds its writes with
    `asyncio.wait_for`, which swallows a cancellation that arrives just as
    the write ends (fixed in 3.12): the caller then went on as if never
    cancelled (a cancelled `tail` read on, and a test session hung at its
    end). The cancellation is raised here once the call is over."""
    task = asyncio.current_task()
    before = task.cancelling() if task is not None else 0
    try:
        result = await call
    except Exception:  # a failure after the swallowed cancellation: still cancelled
        if task is not None and task.cancelling() > before:
            raise asyncio.CancelledError from None
        raise
    if task is not None and task.cancelling() > before:
        raise asyncio.CancelledError
    return result


async def write(conn: AbstractConnection, payload: bytes) -> None:
    """Write packed commands on a connection, connecting it if needed.
    The caller bounds the time: redis-py's own write timeout runs the write
    in a new task on Python 3.11, which costs more than the write."""
    if not conn.is_connected:
        await uncancelled(conn.connect())  # type: ignore[no-untyped-call]
    writer = conn._writer
    assert writer is not None
    writer.write(payload)
    await writer.drain()


def loop_of(conn: AbstractConnection) -> asyncio.AbstractEventLoop:
    """The event loop a connection runs on: its stream reader's, read
    without `asyncio.get_running_loop` (a system call on Python 3.11); the
    running loop while it is not connected."""
    reader = conn._reader
    if reader is None:
        return asyncio.get_running_loop()
    loop: asyncio.AbstractEventLoop = reader._loop  # type: ignore[attr-defined]
    return loop


def socket_timeout(conn: AbstractConnection) -> float | None:
    timeout = conn.socket_timeout
    return None if timeout is None else float(timeout)


def dedicated_connection(source: ConnectionPool | ClusterNode) -> AbstractConnection:
    """A new connection with a pool's (or a cluster node's) settings that
    belongs to no pool: the near cache's invalidation channel holds it for
    good. Not connected yet; it does not retry on its own. It speaks RESP2,
    where the server's announcements arrive as Pub/Sub messages that redis-py
    returns as they are (in RESP3 they are pushes redis-py keeps for its own
    client-side cache)."""
    kwargs = dict(source.connection_kwargs)
    kwargs["retry"] = Retry(NoBackoff(), 0)
    kwargs["protocol"] = 2
    conn: AbstractConnection = source.connection_class(**kwargs)
    return conn


# -- one server -----------------------------------------------------------


async def acquire(pool: ConnectionPool) -> AbstractConnection:
    conn: AbstractConnection = await uncancelled(pool.get_connection())  # type: ignore[no-untyped-call]
    return conn


def pool_size(pool: ConnectionPool) -> int:
    """The most connections the pool opens."""
    size: int = pool.max_connections
    return size


async def release(pool: ConnectionPool, conn: AbstractConnection) -> None:
    await pool.release(conn)


async def drop_idle(pool: ConnectionPool) -> None:
    """Close the pool's idle connections (the next calls dial anew)."""
    await pool.disconnect(inuse_connections=False)


# -- a cluster ------------------------------------------------------------


def node_for_slot(client: RedisCluster, slot: int) -> ClusterNode:
    """The primary serving `slot` in the client's topology (SlotNotCoveredError
    if none does)."""
    node: ClusterNode = client.nodes_manager.get_node_from_slot(slot)
    return node


def slot_table(client: RedisCluster) -> object:
    """The client's slot table, as an identity: redis-py builds a new one
    each time it reads the cluster's slots (a slot it moves on a MOVED
    changes it in place)."""
    table: object = client.nodes_manager.slots_cache
    return table


def node_at(client: RedisCluster, host: str, port: int) -> ClusterNode | None:
    node: ClusterNode | None = client.nodes_manager.get_node(host, port)
    return node


def node_acquire(node: ClusterNode) -> AbstractConnection:
    """A connection of the node's own pool (MaxConnectionsError when full)."""
    conn: AbstractConnection = node.acquire_connection()
    return conn


def node_release(node: ClusterNode, conn: AbstractConnection) -> None:
    node.release(conn)  # type: ignore[arg-type]


async def follow_redirect(client: RedisCluster, exc: MovedError | AskError) -> None:
    """Record in the client's slot table that a slot now lives elsewhere."""
    await client.nodes_manager.move_slot(exc)


async def reload_topology(client: RedisCluster) -> None:
    """Ask the cluster for its slots again (after a failover or a refused node)."""
    await uncancelled(client.nodes_manager.initialize())


def check() -> None:
    """Raise `RuntimeError` naming every internal above that this redis-py
    version no longer has."""
    missing: list[str] = []
    parser = _AsyncHiredisParser(socket_read_size=65536)
    for owner, names in (
        (parser, ("_reader", "read_from_socket", "_stream")),
        (
            AbstractConnection,
            ("_parser", "_reader", "_writer", "is_connected", "connect", "socket_timeout"),
        ),
        (
            ConnectionPool(),
            (
                "get_connection",
                "release",
                "disconnect",
                "connection_class",
                "connection_kwargs",
                "max_connections",
            ),
        ),
        (
            ClusterNode("localhost", 6379),
            ("acquire_connection", "release", "connection_class", "connection_kwargs"),
        ),
    ):
        for name in names:
            if not hasattr(owner, name) and name not in getattr(owner, "__slots__", ()):
                missing.append(f"{getattr(owner, '__name__', type(owner).__name__)}.{name}")
    if "push_request" not in inspect.signature(AbstractConnection.read_response).parameters:
        missing.append("AbstractConnection.read_response(push_request=)")
    loop = asyncio.new_event_loop()
    try:
        if getattr(asyncio.StreamReader(loop=loop), "_loop", None) is not loop:
            missing.append("asyncio.StreamReader._loop")
    finally:
        loop.close()
    from redis.asyncio.cluster import NodesManager

    for name in ("get_node_from_slot", "get_node", "move_slot", "initialize", "slots_cache"):
        if not hasattr(NodesManager, name):
            missing.append(f"NodesManager.{name}")
    if missing:
        raise RuntimeError(
            "this redis-py version changed internals sessionkit's transport uses: "
            + ", ".join(missing)
        )
