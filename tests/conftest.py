"""Backends for the contract tests: the embedded real server (or REDIS_URL),
a real embedded Redis Cluster (or REDIS_CLUSTER_URL), and fakeredis.

Servers start once per test session; each test gets fresh clients and its
own key prefix, so tests never see each other's keys.
"""

from __future__ import annotations

import asyncio
import gc
import itertools
import os
import time
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import fakeredis
import pytest
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster

from sessionkit import SessionStore
from sessionkit import _keys as keys
from sessionkit.events import Event, EventConsumer
from sessionkit.server import EmbeddedCluster, EmbeddedServer, find_server_binary, server_version
from sessionkit.store import Client

_prefixes = itertools.count()


def pytest_report_header() -> str:
    """Which server the embedded servers and clusters of this run are."""
    binary = find_server_binary()
    version = ".".join(map(str, server_version(binary)))
    urls = [v for v in ("REDIS_URL", "REDIS_CLUSTER_URL") if os.environ.get(v)]
    given = f"; {' and '.join(urls)} set: those servers instead" if urls else ""
    return f"embedded server: {os.path.basename(binary)} {version} ({binary}){given}"


@pytest.fixture
def drops_connections() -> Iterator[None]:
    """For tests that kill servers or connections: redis-py then leaves some
    connection objects to be garbage-collected unclosed (a ResourceWarning).
    Collect them here, with that warning expected, instead of letting them
    surface in whichever test runs next."""
    yield
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        gc.collect()


@pytest.fixture(scope="session")
def server_url() -> Iterator[str]:
    """A real server: REDIS_URL, or a private embedded one."""
    if os.environ.get("REDIS_URL"):
        yield os.environ["REDIS_URL"]
        return
    with EmbeddedServer() as server:
        yield server.url


@pytest.fixture(scope="session")
def cluster_url() -> Iterator[str]:
    """A real Redis Cluster: REDIS_CLUSTER_URL, or a private 3-master one."""
    if os.environ.get("REDIS_CLUSTER_URL"):
        yield os.environ["REDIS_CLUSTER_URL"]
        return
    with EmbeddedCluster() as cluster:
        yield cluster.url


@pytest.fixture(scope="session")
def fake_server() -> fakeredis.FakeServer:
    return fakeredis.FakeServer()


@dataclass
class Backend:
    """A client on one backend plus the raw access tests need to inspect it."""

    name: str
    client: Client

    async def keys(self, prefix: str, *, streams: bool = False) -> list[str]:
        """Every session and index key under `prefix` (SCAN on every primary
        of a cluster), and the event streams and their counters too if
        `streams`."""
        found = [
            k.decode() if isinstance(k, bytes) else k
            async for k in self.client.scan_iter(match=f"{prefix}:*", count=1000)
        ]
        return sorted({k for k in found if streams or not k.endswith(("}:events", "}:events:n"))})

    async def dump(self, prefix: str) -> dict[str, Any]:
        """Every key under `prefix` with its value (strings, sorted sets and
        the entries of streams)."""
        out: dict[str, Any] = {}
        for key in await self.keys(prefix, streams=True):
            kind = await self.client.type(key)
            kind = kind.decode() if isinstance(kind, bytes) else kind
            if kind == "string":
                out[key] = await self.client.get(key)
            elif kind == "zset":
                out[key] = await self.client.zrange(key, 0, -1, withscores=True)
            elif kind == "stream":
                out[key] = await self.client.xrange(key)
            else:
                out[key] = kind
        return out

    async def flush_scripts(self) -> None:
        """SCRIPT FLUSH (redis-py sends it to every node of a cluster)."""
        await self.client.script_flush()


BACKENDS = ("server", "cluster", "fake")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "backends(*names): run the test only on these backends (of server, cluster, "
        "fake; default all three)",
    )


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Every test that uses `backend` runs on each backend its closest
    `backends` marker names (class, module or test), all three by default:
    one place decides, no fixture is overridden or imported."""
    if "backend" not in metafunc.fixturenames:
        return
    marker = metafunc.definition.get_closest_marker("backends")
    names = marker.args if marker else BACKENDS
    unknown = set(names) - set(BACKENDS)
    if unknown:
        raise pytest.UsageError(f"unknown backends {sorted(unknown)}: choose from {BACKENDS}")
    metafunc.parametrize(
        "backend",
        [pytest.param(n, marks=getattr(pytest.mark, n)) for n in names],
        indirect=True,
    )


def make_client(request: pytest.FixtureRequest, name: str) -> Client:
    if name == "server":
        return aioredis.Redis.from_url(request.getfixturevalue("server_url"))
    if name == "cluster":
        url = request.getfixturevalue("cluster_url").replace("redis+cluster://", "redis://")
        return RedisCluster.from_url(url)
    return fakeredis.FakeAsyncRedis(server=request.getfixturevalue("fake_server"))


@pytest.fixture
async def backend(request: pytest.FixtureRequest) -> AsyncIterator[Backend]:
    client = make_client(request, request.param)
    yield Backend(request.param, client)
    await client.aclose()


@pytest.fixture
def prefix() -> str:
    return f"t{next(_prefixes)}x{os.getpid()}"


StoreFactory = Callable[..., SessionStore]


@pytest.fixture
def make_store(backend: Backend, prefix: str) -> StoreFactory:
    """Stores on this test's backend and prefix, with the options given."""

    def make(**options: Any) -> SessionStore:
        return SessionStore(backend.client, prefix=prefix, **options)

    return make


@pytest.fixture
def store(make_store: StoreFactory) -> SessionStore:
    return make_store()


Op = Callable[[], Awaitable[Any]]


def pytest_collection_finish(session: pytest.Session) -> None:
    """What exists once the tests are collected (modules, hypothesis, the
    parsers' tables) lives for the whole run: freeze it, so that the
    collection after each test below scans only what tests made (about
    70 ms a test otherwise)."""
    gc.collect()
    gc.freeze()


@pytest.fixture(autouse=True)
def _collect_garbage_in_the_test_that_made_it() -> Iterator[None]:
    """Objects a test leaks are collected (and warned about) in that test."""
    yield
    gc.collect()


def stream_of(prefix: str, user_id: str) -> str:
    """The event stream a user's changes go to."""
    return keys.events_key(prefix, keys.user_digest(user_id)[1])


class SlotMove:
    """Moves one hash slot between two masters by hand, as ``valkey-cli
    --cluster reshard`` does, behind the store client's back (its slot map
    goes stale): `start` marks the slot moving and moves its keys, `assign`
    ends the move on the nodes named, `finish` on every node."""

    def __init__(self, cluster: EmbeddedCluster, slot: int, source: int, target: int = 0) -> None:
        self.slot = slot
        self.ports = [n.port for n in cluster.nodes]
        self.source = source
        self.target = target or next(p for p in self.ports if p != source)
        # redis-py leaves a plain client's execute_command untyped. Replies
        # as text: the move reads node ids and CLUSTER INFO / NODES back.
        self.clients: dict[int, Any] = {
            p: aioredis.Redis(port=p, decode_responses=True) for p in self.ports
        }

    async def on(self, port: int, *command: str | int) -> Any:
        return await self.clients[port].execute_command(*command)

    async def start(self) -> None:
        """Mark the slot moving and move its keys: until the move ends, no
        node serves them to a client that does not ask (``ASKING``)."""
        self.source_id = await self.on(self.source, "CLUSTER", "MYID")
        self.target_id = await self.on(self.target, "CLUSTER", "MYID")
        await self.on(self.target, "CLUSTER", "SETSLOT", self.slot, "IMPORTING", self.source_id)
        await self.on(self.source, "CLUSTER", "SETSLOT", self.slot, "MIGRATING", self.target_id)
        names = await self.on(self.source, "CLUSTER", "GETKEYSINSLOT", self.slot, 1000)
        assert names  # the slot's keys: what the move is about
        await self.on(self.source, "MIGRATE", "127.0.0.1", self.target, "", 0, 5000, "KEYS", *names)

    async def assign(self, *ports: int) -> None:
        """End the move on these nodes, in this order: each then names the
        target the slot's owner (the others still do not)."""
        for port in ports:
            await self.on(port, "CLUSTER", "SETSLOT", self.slot, "NODE", self.target_id)

    async def finish(self) -> None:
        """End the move on every node, then wait until the cluster has settled:
        every node knows the target's configuration epoch (the target bumps
        it on taking the slot unless it is the largest already). Before
        that, a ping the source sent before its own SETSLOT, read by another
        node after that node's, gives the slot back to the source there
        until the target's next ping: the cluster itself answers stale,
        which no client can see through."""
        await self.assign(self.target, self.source, *self.ports)
        deadline = time.monotonic() + 10
        while not await self._settled():
            assert time.monotonic() < deadline, "the cluster did not settle after the move"
            await asyncio.sleep(0.01)

    async def _settled(self) -> bool:
        info = await self.on(self.target, "CLUSTER", "INFO")
        epoch = info.split("cluster_my_epoch:")[1].split()[0]
        for port in self.ports:
            nodes = await self.on(port, "CLUSTER", "NODES")
            line = next(n.split() for n in nodes.splitlines() if n.startswith(self.target_id))
            ranges = await self.on(port, "CLUSTER", "SLOTS")
            owner = next(r[2][1] for r in ranges if r[0] <= self.slot <= r[1])
            if line[6] != epoch or owner != self.target:
                return False
        return True

    async def aclose(self) -> None:
        for client in self.clients.values():
            await client.aclose()


async def drain(consumer: EventConsumer, *, ack: bool = True) -> list[Event]:
    """Every event the consumer gets until a read comes back empty."""
    out: list[Event] = []
    while batch := await consumer.read():
        out += batch
        if ack:
            await consumer.ack(*batch)
    return out
