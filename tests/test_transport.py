"""The transport every Redis call goes through: a call alone goes out at once
on its own task, overlapping calls share one write, a cluster gets one batch
per node, MOVED and ASK are followed, a connection cut mid-batch fails or
repeats exactly the calls whose replies it lost, and the event consumer
rides the same path."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import redis.asyncio as aioredis
from redis import exceptions as rx
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.connection import Connection
from redis.crc import key_slot

from sessionkit import (
    BackendError,
    BackendTimeout,
    BackendUnavailable,
    Session,
    SessionStore,
    _redispy,
    _resp,
    _transport,
)
from sessionkit import _keys as keys
from sessionkit import _scripts as scripts
from sessionkit._scripts import Scripts, Settings, script_call
from sessionkit.defaults import BUCKETS
from sessionkit.events import EventConsumer
from sessionkit.server import EmbeddedCluster, EmbeddedServer
from tests.conftest import SlotMove


class Writes:
    """Every batch the transport writes: the connection's port, the task
    that wrote it, and the commands in it."""

    def __init__(self) -> None:
        self.log: list[tuple[int, asyncio.Task[Any] | None, list[list[bytes]]]] = []

    def commands(self) -> int:
        return sum(len(cmds) for _, _, cmds in self.log)


@pytest.fixture
def writes(monkeypatch: pytest.MonkeyPatch) -> Iterator[Writes]:
    seen = Writes()
    real = _redispy.write

    async def counting(conn: Any, payload: bytes) -> None:
        seen.log.append((int(conn.port), asyncio.current_task(), _split(payload)))
        await real(conn, payload)

    monkeypatch.setattr(_redispy, "write", counting)
    yield seen


def _split(payload: bytes) -> list[list[bytes]]:
    """The commands in a packed buffer."""
    out = []
    while payload:
        parts = _resp.unpack(payload)
        out.append(parts)
        payload = payload[len(_resp.pack(*parts)) :]
    return out


@pytest.mark.parametrize(
    "key",
    ["sk:{007b}:s:abc", "{a}{b}", "a{}b", "{}", "{", "}{a}", "{{a}", "no tag", "ü{ü}", "x{y"],
)
def test_a_key_is_routed_to_the_slot_the_server_gives_it(key: str) -> None:
    assert keys.slot_of(key) == key_slot(key.encode())
    assert keys.slot_of(key) == key_slot(key.encode())  # looked up the second time


def test_every_call_routes_to_the_slot_of_every_key_it_names() -> None:
    """A call carries its bucket's slot, looked up rather than hashed from
    a key on every call: it must be the slot the server gives each key."""
    settings = Settings("sk:app", 1000, 500, 10, 60_000, 100)
    digest, bucket = keys.user_digest("ü:{alice}")
    sid = keys.session_id(keys.new_token(bucket))
    calls = [
        scripts.create_call(settings, "ü:{alice}", digest, bucket, sid, b"{}", ("g",)),
        scripts.get_call(settings, bucket, sid, digest),
        scripts.get_call(settings, bucket, sid),
        scripts.list_call(settings, bucket, digest),
        scripts.delete_call(settings, "ü:{alice}", digest, bucket, sid),
        scripts.delete_all_call(settings, "ü:{alice}", digest, bucket, ""),
        scripts.groups_call(settings, "add", "ü:{alice}", digest, bucket, ("g",)),
    ]
    for call in calls:
        _, _, numkeys, *rest = _resp.unpack(call.payload)
        named = rest[: int(numkeys)]
        assert named and {key_slot(k) for k in named} == {call.slot}
    # Every bucket's, whatever the prefix.
    assert len(keys.BUCKET_SLOTS) == BUCKETS
    for b, slot in enumerate(keys.BUCKET_SLOTS):
        assert slot == key_slot(keys.events_key("sk:app", b).encode())


def test_the_redis_py_internals_the_transport_uses_are_there() -> None:
    _redispy.check()


async def _swallows_a_cancel(result: object = "went on") -> object:
    """What Python 3.11's `asyncio.wait_for` (under redis-py's writes) does
    when a cancellation arrives just as its inner write ends."""
    try:
        await asyncio.sleep(10)
    except asyncio.CancelledError:
        if isinstance(result, BaseException):
            raise result from None
        return result
    return "not cancelled"


async def test_a_cancellation_redis_py_swallows_still_cancels_the_caller() -> None:
    for inner in ("went on", rx.ConnectionError("then failed")):
        task = asyncio.ensure_future(_redispy.uncancelled(_swallows_a_cancel(inner)))
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    # Nothing changes for a call that was not cancelled, or that failed.
    assert await _redispy.uncancelled(asyncio.sleep(0, "done")) == "done"
    with pytest.raises(rx.ConnectionError):
        await _redispy.uncancelled(_raises(rx.ConnectionError("down")))


async def _raises(exc: BaseException) -> None:
    raise exc


def test_the_error_table_types_every_redis_fault_and_nothing_else() -> None:
    f = _transport.classify
    assert f(rx.ConnectionError()) is _transport.Fault.BROKEN
    assert f(rx.TimeoutError()) is _transport.Fault.TIMEOUT
    assert f(TimeoutError()) is _transport.Fault.TIMEOUT
    assert f(rx.MovedError("3999 127.0.0.1:6381")) is _transport.Fault.MOVED
    assert f(rx.AskError("3999 127.0.0.1:6381")) is _transport.Fault.ASK
    assert f(rx.TryAgainError()) is _transport.Fault.MOVING
    assert f(rx.ClusterDownError("down")) is _transport.Fault.MOVING
    assert f(rx.NoScriptError()) is _transport.Fault.NOSCRIPT
    assert f(rx.ResponseError("WRONGTYPE")) is _transport.Fault.REFUSED
    assert f(rx.RedisClusterException("no node")) is _transport.Fault.BROKEN
    assert f(rx.SlotNotCoveredError("slot")) is _transport.Fault.MOVING
    # A programming error is not a Redis fault: it is never retried or renamed.
    assert f(ValueError()) is None and f(AttributeError()) is None
    timeout = _transport.error(rx.TimeoutError("x"), "get")
    assert isinstance(timeout, BackendTimeout) and isinstance(timeout, BackendUnavailable)
    assert timeout.code == "backend_timeout"
    assert isinstance(_transport.error(rx.ResponseError("x"), "get"), BackendError)


async def test_an_unreachable_cluster_is_backend_unavailable() -> None:
    from sessionkit.server import free_port

    store = SessionStore.from_url(f"redis+cluster://127.0.0.1:{free_port()}", socket_timeout=1.0)
    try:
        with pytest.raises(BackendUnavailable, match="unreachable during create"):
            await store.create("alice")
    finally:
        await store.aclose()


@pytest.mark.server
async def test_a_programming_error_reaches_the_caller_as_it_is(
    server_url: str, prefix: str
) -> None:
    async with SessionStore.from_url(server_url, prefix=prefix) as store:
        with pytest.raises(TypeError):
            await store.transport.call(script_call(Scripts.get, ("k", "p"), ("", "x", None, 0)))


@pytest.mark.server
async def test_a_call_alone_goes_out_at_once_on_the_calling_task(
    server_url: str, prefix: str, writes: Writes
) -> None:
    async with SessionStore.from_url(server_url, prefix=prefix) as store:
        made = await store.create("alice")
        await store.load_scripts()
        writes.log.clear()
        for _ in range(20):
            assert await store.resolve(made.token or "") is not None
        me = asyncio.current_task()
        assert len(writes.log) == 20
        assert all(task is me and len(cmds) == 1 for _, task, cmds in writes.log)


@pytest.mark.server
async def test_overlapping_calls_share_writes(server_url: str, prefix: str, writes: Writes) -> None:
    async with SessionStore.from_url(server_url, prefix=prefix) as store:
        made = [await store.create(f"u{i}") for i in range(200)]
        await store.load_scripts()
        writes.log.clear()
        got = await asyncio.gather(*(store.resolve(s.token or "") for s in made))
        assert [g.id if g else None for g in got] == [s.id for s in made]
        assert writes.commands() == 200
        assert len(writes.log) <= 3  # the first call alone, then the rest batched


@pytest.mark.server
async def test_a_full_queue_goes_out_on_the_caller_that_filled_it(
    server_url: str, prefix: str, writes: Writes
) -> None:
    """Once `FLUSH_AT` calls wait and a slot is free, the caller that made
    the queue full sends it: the server starts on them while the other
    callers of the same tick are still coming, instead of idling until the
    tick ends."""
    flush = _transport.FLUSH_AT
    async with SessionStore.from_url(server_url, prefix=prefix) as store:
        made = [await store.create(f"u{i}") for i in range(20)]
        await store.load_scripts()
        writes.log.clear()
        tasks = [asyncio.ensure_future(store.resolve(s.token or "")) for s in made]
        got = await asyncio.gather(*tasks)
        assert [g.id if g else None for g in got] == [s.id for s in made]
        assert [len(cmds) for _, _, cmds in writes.log] == [1, flush, 20 - 1 - flush]
        assert [task for _, task, _ in writes.log] == [tasks[0], tasks[flush], tasks[flush + 1]]


@pytest.mark.server
@pytest.mark.parametrize("most", [2, 1])
async def test_only_a_server_s_lane_sends_a_queue_early(
    server_url: str, most: int, writes: Writes
) -> None:
    """Calls that queue while a slot is free: on a server's lane (two
    exchanges) the caller that fills half the queue sends it, so the server
    works meanwhile; on a cluster node's (one) they wait for the leader,
    and go as one batch: the other nodes keep this process busy, and a
    batch split in two would cost a second write."""
    client = aioredis.Redis.from_url(server_url)
    lane, source = _transport._Lane(most), _transport._PoolConnections(client.connection_pool)
    ping = _resp.pack("PING")
    try:
        lane.busy = most  # every slot taken by exchanges of others
        calls = [asyncio.ensure_future(_transport._send_on(lane, source, ping)) for _ in range(4)]
        for _ in range(2):  # queued, behind a leader waiting for a slot
            await asyncio.sleep(0)
        lane.busy -= 1  # one of those exchanges ends
        calls += [asyncio.ensure_future(_transport._send_on(lane, source, ping)) for _ in range(16)]
        await asyncio.sleep(0)  # the rest arrive, with the slot free
        lane.wake()
        got = await asyncio.wait_for(asyncio.gather(*calls), 5)
        assert got == [b"PONG"] * 20
        flush = _transport.FLUSH_AT
        sizes = [len(cmds) for _, _, cmds in writes.log]
        assert sizes == ([flush, 20 - flush] if most == 2 else [20])
    finally:
        await source.drop()
        await client.aclose()


class CuttingProxy:
    """A loopback TCP proxy to a real server that, on the first connection to
    carry a batch (several EVALSHA in one write), passes exactly `limit` bytes
    of the batch's replies and then closes it: a connection broken in the
    middle of a batch. `cut_calls` is how many calls that batch carried;
    `sent`, how many EVALSHA the client sent through it in all (what the
    server's own count would say too, but for other clients' calls)."""

    def __init__(self, port: int, limit: int) -> None:
        self.port = port
        self.limit = limit
        self.cut = False
        self.cut_calls = 0
        self.sent = 0
        self.server: asyncio.Server | None = None

    async def __aenter__(self) -> CuttingProxy:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"redis://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.port)
        batch = asyncio.Event()
        carried = 0

        async def upstream() -> None:
            nonlocal carried
            tail = b""  # too short to hold a whole EVALSHA: none is counted twice
            while data := await reader.read(65536):
                # Counted across reads: a name split between two is counted once.
                calls = (tail + data).count(b"EVALSHA")
                tail = data[-6:]
                if calls > 1:
                    batch.set()
                if batch.is_set():
                    carried += calls
                self.sent += calls
                up_writer.write(data)
                await up_writer.drain()

        async def downstream() -> None:
            passed = 0
            while data := await up_reader.read(65536):
                if batch.is_set() and not self.cut and passed + len(data) > self.limit:
                    self.cut, self.cut_calls = True, carried
                    writer.write(data[: self.limit - passed])
                    await writer.drain()
                    return
                if batch.is_set():
                    passed += len(data)
                writer.write(data)
                await writer.drain()

        tasks = [asyncio.ensure_future(upstream()), asyncio.ensure_future(downstream())]
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for t in tasks:
            t.cancel()
        for w in (writer, up_writer):
            w.close()
            with contextlib.suppress(Exception):
                await w.wait_closed()


@pytest.mark.server
@pytest.mark.usefixtures("drops_connections")
@pytest.mark.filterwarnings("ignore::ResourceWarning")
@pytest.mark.parametrize("retries", [0, 2])
async def test_a_connection_cut_mid_batch_fails_or_repeats_exactly_the_unanswered_calls(
    server_url: str, prefix: str, retries: int
) -> None:
    port = int(server_url.rsplit(":", 1)[1].split("/")[0])
    # Unknown tokens of a known shape: each reply is a nil (RESP3 "_", RESP2 "$-1").
    tokens = [keys.new_token(7) for _ in range(20)]
    nil = 3 if Connection().protocol == 3 else 5
    admin = aioredis.Redis(port=port)
    try:
        # The scripts are loaded beforehand (not through the proxy): a first
        # NOSCRIPT reply would spend the proxy's byte budget on its own.
        await SessionStore(admin).load_scripts()
        # The first call goes alone, the others in batches; the first batch
        # to reach the proxy is cut after 3 of its replies.
        proxy = CuttingProxy(port, limit=3 * nil)
        async with proxy, SessionStore.from_url(proxy.url, prefix=prefix, retries=retries) as store:
            calls = (store.resolve(t) for t in tokens)
            results = await asyncio.gather(*calls, return_exceptions=True)
        # Counted on the way, not by the server: the server counts every
        # client of it (one serves all of a worker's tests), and once read
        # 36 calls here where 25 were expected.
        sent = proxy.sent
        assert proxy.cut and proxy.cut_calls > 3
        unanswered = proxy.cut_calls - 3
        answered = [r for r in results if r is None]
        failed = [r for r in results if isinstance(r, BackendUnavailable)]
        if retries:
            assert len(answered) == 20  # the unanswered went out again, once
            assert sent == 20 + unanswered
        else:
            assert results[0] is None  # it went alone, before the cut
            assert len(failed) == unanswered and len(answered) == 20 - unanswered
            assert sent == 20
    finally:
        await admin.aclose()


@pytest.mark.server
async def test_the_event_consumer_uses_the_same_transport(
    server_url: str, prefix: str, writes: Writes
) -> None:
    async with SessionStore.from_url(server_url, prefix=prefix) as store:
        consumer = EventConsumer(store, group="g", consumer="c", block=0.05, start="all")
        await store.create("alice")
        writes.log.clear()
        status = await consumer.status()
        assert status.undelivered == 1
        # 1,024 streams, two XINFO each: a handful of batched writes.
        assert writes.commands() == 2 * 1024
        assert len(writes.log) <= 2 * 1024 // _transport.MAX_BATCH
        writes.log.clear()
        events = await consumer.read()
        assert [e.type for e in events] == ["created"]
        assert any(cmds[0][0] == b"XREADGROUP" for _, _, cmds in writes.log)


@pytest.fixture(scope="module")
async def own_cluster() -> AsyncIterator[EmbeddedCluster]:
    """A private cluster whose slots these tests move by hand."""
    async with EmbeddedCluster() as cluster:
        yield cluster


def _node_slots(client: Any) -> dict[int, int]:
    """Port of the primary serving each slot, as the client sees it."""
    return {
        slot: nodes[0].port for slot, nodes in client.nodes_manager.slots_cache.items() if nodes
    }


@pytest.mark.cluster
async def test_a_cluster_gets_one_batch_per_node(
    own_cluster: EmbeddedCluster, prefix: str, writes: Writes
) -> None:
    async with SessionStore.from_url(own_cluster.url, prefix=prefix) as store:
        made = [await store.create(f"u{i}") for i in range(300)]
        await store.load_scripts()
        owner = _node_slots(store.client)
        writes.log.clear()
        got = await asyncio.gather(*(store.resolve(s.token or "") for s in made))
        assert [g.id if g else None for g in got] == [s.id for s in made]
        assert writes.commands() == 300
        ports = {port for port, _, _ in writes.log}
        assert len(ports) == 3
        for port in ports:
            assert sum(1 for p, _, _ in writes.log if p == port) <= 3
        for port, _, cmds in writes.log:
            # EVALSHA sha numkeys key…: every key of a batch is on its node.
            assert all(owner[key_slot(cmd[3])] == port for cmd in cmds)


@pytest.mark.cluster
async def test_a_cluster_call_goes_alone_only_when_no_node_has_a_call_in_flight(
    cluster_url: str, prefix: str, writes: Writes
) -> None:
    """A call alone goes out at once, on its own task. Under load, a call
    whose node is idle joins the calls of its tick instead: sent alone, it
    would make them wait for its exchange to end."""
    async with SessionStore.from_url(cluster_url, prefix=prefix) as store:
        made = [await store.create(f"u{i}") for i in range(40)]
        await store.load_scripts()
        owner = _node_slots(store.client)
        on: dict[int, list[Session]] = {}
        for s in made:
            bucket = keys.session_id_bucket(s.id)
            assert bucket is not None
            on.setdefault(owner[keys.BUCKET_SLOTS[bucket]], []).append(s)
        b = max(on, key=lambda port: len(on[port]))  # 14 sessions at least
        a = next(port for port in on if port != b)
        on_a, on_b = on[a], on[b]
        writes.log.clear()
        for s in made[:10]:
            assert await store.resolve(s.token or "") is not None
        me = asyncio.current_task()
        assert [(task, len(cmds)) for _, task, cmds in writes.log] == [(me, 1)] * 10
        writes.log.clear()
        first = asyncio.ensure_future(store.resolve(on_a[0].token or ""))
        await asyncio.sleep(0)  # out at once, and in flight
        rest = [asyncio.ensure_future(store.resolve(s.token or "")) for s in on_b[:5]]
        got = await asyncio.gather(first, *rest)
        assert all(g is not None for g in got)
        assert sorted((port, len(cmds)) for port, _, cmds in writes.log) == sorted([(a, 1), (b, 5)])


@pytest.mark.server
@pytest.mark.filterwarnings("ignore::ResourceWarning")  # redis-py leaves the first loop's sockets
def test_a_store_serves_one_event_loop_after_another(server_url: str, prefix: str) -> None:
    """Queued calls are made on the loop they run on, even when the store
    outlives the loop it was first used on."""
    store = SessionStore.from_url(server_url, prefix=prefix)

    async def overlapping(last: bool) -> list[Session | None]:
        made = await store.create("alice")
        got = await asyncio.gather(*(store.resolve(made.token or "") for _ in range(50)))
        if last:
            await store.aclose()
        return got

    for last in (False, True):
        assert all(got is not None for got in asyncio.run(overlapping(last)))


class InFlight:
    """The most exchanges out at once on each lane's connection source."""

    def __init__(self) -> None:
        self.now: dict[int, int] = {}
        self.most: dict[int, int] = {}


@pytest.fixture
def in_flight(monkeypatch: pytest.MonkeyPatch) -> InFlight:
    seen = InFlight()
    real = _transport._exchange

    async def counting(source: Any, calls: Any) -> list[Any]:
        lane = id(source)
        seen.now[lane] = seen.now.get(lane, 0) + 1
        seen.most[lane] = max(seen.most.get(lane, 0), seen.now[lane])
        try:
            return await real(source, calls)
        finally:
            seen.now[lane] -= 1

    monkeypatch.setattr(_transport, "_exchange", counting)
    return seen


@pytest.mark.server
async def test_a_server_has_two_exchanges_in_flight_under_load(
    server_url: str, prefix: str, in_flight: InFlight
) -> None:
    async with SessionStore.from_url(server_url, prefix=prefix) as store:
        made = [await store.create(f"u{i}") for i in range(300)]
        in_flight.most.clear()
        got = await asyncio.gather(*(store.resolve(s.token or "") for s in made))
        assert [g.id if g else None for g in got] == [s.id for s in made]
        assert list(in_flight.most.values()) == [_transport.MAX_IN_FLIGHT]


@pytest.mark.server
async def test_the_exchanges_of_a_lane_share_one_timer(
    server_url: str, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each exchange has its time limit, but no timer of its own: one timer
    per lane checks them all, every eighth of the limit while any is in
    flight."""
    loop = asyncio.get_running_loop()
    timers: list[Any] = []
    exchanges = 0
    real_call_at, real_exchange = loop.call_at, _transport._exchange

    def call_at(when: float, callback: Any, *args: Any, **kw: Any) -> asyncio.TimerHandle:
        timers.append(callback)
        return real_call_at(when, callback, *args, **kw)

    async def exchange(source: Any, calls: Any) -> list[Any]:
        nonlocal exchanges
        exchanges += 1
        return await real_exchange(source, calls)

    monkeypatch.setattr(loop, "call_at", call_at)
    monkeypatch.setattr(_transport, "_exchange", exchange)
    started = loop.time()
    async with SessionStore.from_url(server_url, prefix=prefix, socket_timeout=4.0) as store:
        made = [await store.create(f"u{i}") for i in range(300)]  # one by one
        for _ in range(3):
            got = await asyncio.gather(*(store.resolve(s.token or "") for s in made))
            assert [g.id if g else None for g in got] == [s.id for s in made]
        assert exchanges >= 300 + 3 * 2
        checks = [t for t in timers if getattr(t, "__func__", None) is _transport._Watch._check]
        # One, unless the host stalled for half a second (then one more per
        # half second: a check finds an exchange in flight and runs again).
        assert 1 <= len(checks) <= 1 + (loop.time() - started) / 0.5
        watch = checks[0].__self__
        assert watch.limit == 4.0 and not watch.deadlines  # every exchange done


@pytest.mark.server
async def test_a_lane_that_timed_out_times_out_again(prefix: str) -> None:
    """The watch that stopped a stalled exchange goes on watching: the
    lane serves its next calls, and stops the next stalled one."""
    server = EmbeddedServer()
    server.start()
    store = SessionStore.from_url(server.url, prefix=prefix, socket_timeout=0.4, retries=0)
    admin: Any = aioredis.Redis.from_url(server.url)
    try:
        s = await store.create("alice", "g")
        await admin.execute_command("CLIENT", "PAUSE", "700", "ALL")
        with pytest.raises(BackendTimeout):
            await store.resolve(s.token or "")
        await asyncio.sleep(0.5)  # the pause is over
        for _ in range(3):
            got = await asyncio.gather(*(store.resolve(s.token or "") for _ in range(20)))
            assert all(g is not None and g.id == s.id for g in got)
        await admin.execute_command("CLIENT", "PAUSE", "700", "ALL")
        with pytest.raises(BackendTimeout):
            await store.resolve(s.token or "")
    finally:
        await store.aclose()
        await admin.aclose()
        server.stop()


@pytest.mark.server
@pytest.mark.parametrize("pool_size", [2, 64])
async def test_a_lane_keeps_a_connection_per_exchange_but_never_a_small_pool_s_all(
    server_url: str, prefix: str, pool_size: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    taken: list[Any] = []
    real = _redispy.acquire

    async def acquire(pool: Any) -> Any:
        taken.append(pool)
        return await real(pool)

    monkeypatch.setattr(_redispy, "acquire", acquire)
    async with SessionStore.from_url(server_url, prefix=prefix, pool_size=pool_size) as store:
        made = [await store.create(f"u{i}") for i in range(200)]
        for _ in range(2):  # the second burst finds the connections the first gave back
            taken.clear()
            got = await asyncio.gather(*(store.resolve(s.token or "") for s in made))
            assert all(g is not None for g in got)
        kept = min(_transport.MAX_IN_FLIGHT, pool_size // 2)
        # Under load: every exchange but those beyond the kept ones reuses one.
        if kept == _transport.MAX_IN_FLIGHT:
            assert taken == []
        else:
            assert taken  # a pool of two: one kept, the other exchange takes its own
        # Idle: the client's other users still get a connection at once.
        assert await asyncio.wait_for(store.client.ping(), 2)


@pytest.mark.cluster
async def test_a_cluster_node_has_one_exchange_in_flight(
    own_cluster: EmbeddedCluster, prefix: str, in_flight: InFlight
) -> None:
    """The other nodes' lanes keep the process busy meanwhile, and each
    node's batches are larger."""
    async with SessionStore.from_url(own_cluster.url, prefix=prefix) as store:
        made = [await store.create(f"u{i}") for i in range(300)]
        in_flight.most.clear()
        got = await asyncio.gather(*(store.resolve(s.token or "") for s in made))
        assert [g.id if g else None for g in got] == [s.id for s in made]
        assert sorted(in_flight.most.values()) == [1, 1, 1]


async def _topology_reads(node: aioredis.Redis) -> int:
    return sum([await _calls(node, f"cluster|{sub}") for sub in ("slots", "shards", "nodes")])


async def _calls(node: aioredis.Redis, command: str) -> int:
    stats = await node.info("commandstats")
    return int(stats.get(f"cmdstat_{command}", {}).get("calls", 0))


async def _a_slot_to_move(
    store: SessionStore, cluster: EmbeddedCluster, prefix: str, user: str
) -> tuple[Session, int, int, int]:
    """A new session of `user` (in group "g"), its slot, the port of the
    master serving that slot and of another master to move it to."""
    made = await store.create(user, ["g"])
    _, bucket = keys.user_digest(user)
    slot = key_slot(keys.session_key(prefix, bucket, made.id).encode())
    src_port = _node_slots(store.client)[slot]
    masters = [n.port for n in cluster.nodes[:3]]
    return made, slot, src_port, next(p for p in masters if p != src_port)


@pytest.mark.cluster
async def test_moved_and_ask_are_followed(own_cluster: EmbeddedCluster, prefix: str) -> None:
    async with SessionStore.from_url(own_cluster.url, prefix=prefix) as store:
        made, slot, src_port, dst_port = await _a_slot_to_move(store, own_cluster, prefix, "alice")
        there = SlotMove(own_cluster, slot, src_port, dst_port)
        back = SlotMove(own_cluster, slot, dst_port, src_port)
        dst, masters = there.clients[dst_port], [n.port for n in own_cluster.nodes[:3]]
        try:
            await there.start()
            # Mid-move the source answers ASK: the call goes to the target
            # after ASKING. The target holds the session but not every key
            # the script names (the user's prefix is never a key), so it
            # answers TRYAGAIN until the move ends; the call waits for that.
            asking = await _calls(dst, "asking")
            call = asyncio.ensure_future(store.resolve(made.token or ""))
            await asyncio.sleep(0.3)
            assert not call.done()
            assert await _calls(dst, "asking") > asking
            assert _node_slots(store.client)[slot] == src_port  # ASK changes no table
            await there.assign(*masters)
            got = await call
            assert got is not None and got.id == made.id
            # Moved: the client's table was stale until MOVED corrected it
            # (the call above may have ended by ASK, if its last try reached
            # the source between two of the SETSLOTs: one more call then
            # meets the MOVED).
            assert await store.resolve(made.token or "") is not None
            assert _node_slots(store.client)[slot] == dst_port
            # And back, behind the client's back: MOVED alone corrects the
            # table, with no topology reload.
            await back.start()
            await back.assign(*masters)
            reloads = [await _topology_reads(there.clients[p]) for p in masters]
            got = await store.resolve(made.token or "")
            assert got is not None and got.access_groups == ["g"]
            assert _node_slots(store.client)[slot] == src_port
            assert [await _topology_reads(there.clients[p]) for p in masters] == reloads
            assert await store.add_groups("alice", "h") == 1
        finally:
            await there.aclose()
            await back.aclose()


@pytest.mark.cluster
async def test_a_slot_table_read_anew_routes_calls_without_a_redirect(
    own_cluster: EmbeddedCluster, prefix: str, writes: Writes
) -> None:
    """The transport keeps each slot's node; when redis-py reads the
    cluster's slots anew on its own (for another user of the client, say),
    the next call goes where the new table says, not to the node kept."""
    async with SessionStore.from_url(own_cluster.url, prefix=prefix) as store:
        made, slot, src_port, dst_port = await _a_slot_to_move(store, own_cluster, prefix, "carol")
        assert await store.resolve(made.token or "") is not None  # the route is kept
        move = SlotMove(own_cluster, slot, src_port, dst_port)
        try:
            await move.start()
            await move.assign(*(n.port for n in own_cluster.nodes[:3]))
            client = store.client
            assert isinstance(client, RedisCluster)
            await client.nodes_manager.initialize()
            assert _node_slots(store.client)[slot] == dst_port
            await store.load_scripts()  # on every node: one EVALSHA, no EVAL after it
            writes.log.clear()
            got = await store.resolve(made.token or "")
            assert got is not None and got.id == made.id
            assert [port for port, _, _ in writes.log] == [dst_port]
        finally:
            await move.aclose()


@pytest.mark.cluster
async def test_a_move_the_nodes_disagree_on_is_waited_out(
    own_cluster: EmbeddedCluster, prefix: str
) -> None:
    """The last step of a slot move is one command per node. Between the
    source's and the target's, the source sends a call on with MOVED and
    the target, still importing, sends it back: the call waits for the
    nodes to agree instead of spending its redirects in a few
    milliseconds and failing."""
    async with SessionStore.from_url(own_cluster.url, prefix=prefix) as store:
        made, slot, src_port, dst_port = await _a_slot_to_move(store, own_cluster, prefix, "bob")
        move = SlotMove(own_cluster, slot, src_port, dst_port)
        try:
            await move.start()
            # Every node but the target ends the move.
            await move.assign(*(n.port for n in own_cluster.nodes[:3] if n.port != dst_port))
            # Without pauses the call would bounce sixteen times and fail in
            # a few milliseconds, long before gossip settles the question.
            call = asyncio.ensure_future(store.resolve(made.token or ""))
            await asyncio.sleep(0.3)
            await move.assign(dst_port)
            got = await call
            assert got is not None and got.id == made.id and got.access_groups == ["g"]
            assert _node_slots(store.client)[slot] == dst_port
        finally:
            await move.aclose()


@pytest.mark.server
async def test_a_batch_that_gets_no_connection_fails_alone(server_url: str, prefix: str) -> None:
    """Several batches of commands: one that cannot get a connection gets
    that fault as its replies; the batches before it keep theirs (so a
    repeated XACK never counts twice as zero)."""
    client = aioredis.Redis.from_url(server_url)
    await client.set(f"{prefix}:k", "v")
    real = _transport._PoolConnections(client.connection_pool)

    class SecondGetFails(_transport._Connections):
        gets = 0

        async def get(self) -> Any:
            self.gets += 1
            if self.gets == 2:
                raise rx.ConnectionError("no connection to be had")
            return await real.get()

        async def put(self, conn: Any) -> None:
            await real.put(conn)

    n = _transport.MAX_BATCH + 88
    payloads = [(f"{prefix}:k", _resp.pack("GET", f"{prefix}:k"))] * n
    try:
        replies = await _transport._exchange_all(SecondGetFails(), payloads)
    finally:
        await real.drop()
        await client.aclose()
    assert replies[: _transport.MAX_BATCH] == [b"v"] * _transport.MAX_BATCH
    assert all(isinstance(r, rx.ConnectionError) for r in replies[_transport.MAX_BATCH :])
