"""The near cache: resolves from process memory, kept honest by the server.

"Another process" is a second store on its own client (its own connections,
its own cache): the server cannot tell the two apart.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import fakeredis
import msgspec
import pytest
import redis.asyncio as aioredis
from prometheus_client import CollectorRegistry
from redis.asyncio.cluster import RedisCluster

from sessionkit import NearCache, NearCacheStats, SessionStore, ValidationError
from sessionkit import _keys as keys
from sessionkit._model import decode_session
from sessionkit._scripts import get_call
from sessionkit._tracking import CLIENT_NAME
from sessionkit.metrics import PrometheusMetrics
from tests.conftest import Backend, StoreFactory
from tests.test_web import client_for, starlette_app

# The near cache needs a real server's CLIENT TRACKING: no fakeredis.
pytestmark = [
    pytest.mark.backends("server", "cluster"),
    pytest.mark.usefixtures("drops_connections"),
    pytest.mark.filterwarnings("ignore::ResourceWarning"),
]


@pytest.fixture
async def cached(make_store: StoreFactory) -> AsyncIterator[Callable[..., SessionStore]]:
    """Near-cached stores on this test's backend, closed after it."""
    made: list[SessionStore] = []

    def make(**options: object) -> SessionStore:
        options.setdefault("near_cache", True)
        store = make_store(**options)
        made.append(store)
        return store

    yield make
    for store in made:
        await store.aclose()


async def until(condition: Callable[[], bool], what: str, within: float = 5.0) -> None:
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.002)


async def warm(store: SessionStore, token: str) -> None:
    """Resolve until the answer is kept (the channel connects on first use;
    with an idle timeout, a read that slides it writes, and the
    announcement of its own write drops what it kept: on a busy machine two
    reads can be that far apart, so it may take a few rounds)."""
    await store.resolve(token)  # the first read starts the channel
    await until(lambda: _connected(store), "the invalidation channel")
    for _ in range(20):
        await store.resolve(token)
        hits = _stats(store).hits
        assert await store.resolve(token) is not None
        if _stats(store).hits == hits + 1:
            return
    raise AssertionError("no read of this token was answered from the cache")


def _stats(store: SessionStore) -> NearCacheStats:
    stats = store.near_cache_stats()
    assert stats is not None
    return stats


def _connected(store: SessionStore) -> bool:
    return bool(_stats(store).connected)


async def evalsha_calls(backend: Backend) -> int:
    """Scripts run by the server(s) so far (every node of a cluster)."""
    client = backend.client
    if isinstance(client, RedisCluster):
        per_node = await client.info("commandstats", target_nodes=RedisCluster.PRIMARIES)
        stats = [v for v in per_node.values() if isinstance(v, dict)] if per_node else []
        if "cmdstat_evalsha" in per_node:
            stats = [per_node]
    else:
        stats = [await client.info("commandstats")]
    return sum(int(s.get("cmdstat_evalsha", {}).get("calls", 0)) for s in stats)


async def invalidated_after(store: SessionStore, change: Awaitable[object]) -> None:
    """Run `change` (in another store) and wait until its announcement has
    reached `store`."""
    seen = _stats(store).invalidations
    await change
    await until(lambda: _stats(store).invalidations > seen, "the invalidation")


# -- on and off -------------------------------------------------------------


async def test_the_near_cache_is_off_by_default_and_costs_nothing_then(
    make_store: StoreFactory, backend: Backend
) -> None:
    store = make_store()
    assert store.near_cache_stats() is None
    s = await store.create("alice")
    before = await evalsha_calls(backend)
    for _ in range(5):
        assert await store.resolve(s.token or "") is not None
    assert await evalsha_calls(backend) - before == 5  # every read went to the server
    names = await backend.client.client_list()
    rows = names if isinstance(names, list) else []
    assert not [c for c in rows if c.get("name") == CLIENT_NAME]


async def test_a_hit_is_answered_from_memory(
    cached: Callable[..., SessionStore], backend: Backend
) -> None:
    store = cached()
    s = await store.create("alice", ["admin"], data={"cart": [1, 2]})
    await warm(store, s.token or "")
    before = await evalsha_calls(backend)
    for _ in range(50):
        got = await store.resolve(s.token or "")
        assert got is not None and got.id == s.id and got.access_groups == ["admin"]
        got = await store.get("alice", s.token or "")
        assert got is not None and got.data == {"cart": [1, 2]}
    assert await evalsha_calls(backend) == before
    assert _stats(store).hit_ratio > 0.9
    # get checks the owner on a hit too.
    assert await store.get("bob", s.token or "") is None


async def test_a_caller_who_changes_a_cached_session_changes_nobody_elses(
    cached: Callable[..., SessionStore],
) -> None:
    store = cached()
    s = await store.create("alice", ["admin"], data={"cart": [1]})
    await warm(store, s.token or "")
    mine = await store.resolve(s.token or "")
    assert mine is not None
    mine.access_groups.append("root")
    mine.data["cart"].append(2)
    again = await store.resolve(s.token or "")
    assert again is not None and again.access_groups == ["admin"] and again.data == {"cart": [1]}


def test_bad_near_cache_options_are_refused_by_name(backend: Backend) -> None:
    with pytest.raises(ValidationError, match="near_cache"):
        SessionStore(backend.client, near_cache="yes")  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="max_entries"):
        NearCache(max_entries=0)
    with pytest.raises(ValidationError, match="max_age"):
        NearCache(max_age=0)
    with pytest.raises(ValidationError, match="redis-py client"):
        SessionStore(fakeredis.FakeAsyncRedis(), near_cache=True)


# -- kept honest by the server ----------------------------------------------


CHANGES: dict[str, Callable[[SessionStore, str], Awaitable[object]]] = {
    "delete": lambda other, token: other.delete("alice", token),
    "delete_all": lambda other, token: other.delete_all("alice"),
    "revoke": lambda other, token: other.revoke("alice", token),
    "add_groups": lambda other, token: other.add_groups("alice", "new"),
    "remove_groups": lambda other, token: other.remove_groups("alice", "admin"),
}


@pytest.mark.parametrize("change", sorted(CHANGES))
async def test_a_change_by_another_process_reaches_every_cached_read_after_it(
    cached: Callable[..., SessionStore], make_store: StoreFactory, change: str
) -> None:
    reader, other = cached(), make_store()
    s = await other.create("alice", ["admin"])
    token = s.token or ""
    await warm(reader, token)
    await invalidated_after(reader, CHANGES[change](other, token))
    truth = await other.get("alice", token)
    got = await reader.resolve(token)
    if truth is None:
        assert got is None
    else:
        assert got is not None and got.access_groups == truth.access_groups


async def test_eviction_at_the_cap_reaches_the_cache(
    cached: Callable[..., SessionStore], make_store: StoreFactory
) -> None:
    reader, other = cached(max_sessions_per_user=2), make_store(max_sessions_per_user=2)
    oldest = await other.create("alice")
    await other.create("alice")
    await warm(reader, oldest.token or "")
    await invalidated_after(reader, other.create("alice"))
    assert await reader.resolve(oldest.token or "") is None


async def test_a_cached_session_never_outlives_its_expiry(
    cached: Callable[..., SessionStore],
) -> None:
    store = cached(lifetime=0.5, near_cache=NearCache(max_age=60))
    s = await store.create("alice")
    await warm(store, s.token or "")
    await asyncio.sleep(0.6)
    assert await store.resolve(s.token or "") is None


async def test_a_cached_session_is_dropped_after_max_age(
    cached: Callable[..., SessionStore], backend: Backend
) -> None:
    store = cached(near_cache=NearCache(max_age=0.2))
    s = await store.create("alice")
    await warm(store, s.token or "")
    await asyncio.sleep(0.3)
    before = await evalsha_calls(backend)
    assert await store.resolve(s.token or "") is not None
    assert await evalsha_calls(backend) == before + 1


async def test_a_read_that_raced_with_its_invalidation_is_not_kept(
    cached: Callable[..., SessionStore], make_store: StoreFactory
) -> None:
    """The interleaving that would leave a stale entry: the read leaves, a
    change lands and is announced, then the (old) answer comes back."""
    reader, other = cached(), make_store()
    s = await other.create("alice", ["admin"])
    token = s.token or ""
    await warm(reader, token)
    await invalidated_after(reader, other.add_groups("alice", "x"))  # empties the entry
    near = reader._near
    assert near is not None
    ticket = near.ticket()
    assert ticket is not None
    bucket = keys.token_bucket(token)
    assert bucket is not None
    old = await reader.transport.call(get_call(reader.settings, bucket, s.id))
    await invalidated_after(reader, other.remove_groups("alice", "admin"))
    stale = decode_session(old, None, s.id, token, 0)
    assert stale.access_groups == ["admin", "x"]
    near.keep(ticket, token, bucket, old, stale)
    assert _stats(reader).entries == 0
    got = await reader.resolve(token)
    assert got is not None and got.access_groups == ["x"]


async def test_racing_reads_and_changes_never_leave_a_stale_entry(
    cached: Callable[..., SessionStore], make_store: StoreFactory
) -> None:
    """Real concurrency: readers hammer the token while another process
    toggles a group; once the last change is announced, every read sees it."""
    reader, other = cached(), make_store()
    s = await other.create("alice", ["base"])
    token = s.token or ""
    await warm(reader, token)
    stop = False

    async def read() -> None:
        while not stop:
            await reader.resolve(token)
            await asyncio.sleep(0)

    readers = [asyncio.create_task(read()) for _ in range(8)]
    for i in range(60):
        if i % 2:
            await other.remove_groups("alice", "x")
        else:
            await other.add_groups("alice", "x")
    await invalidated_after(reader, other.add_groups("alice", "last"))
    for _ in range(20):
        got = await reader.resolve(token)
        assert got is not None and got.access_groups == ["base", "last"]
        await asyncio.sleep(0.001)
    stop = True
    await asyncio.gather(*readers)


# -- when the server cannot vouch -------------------------------------------


async def _kill_tracking(backend: Backend) -> None:
    client = backend.client
    nodes = client.get_primaries() if isinstance(client, RedisCluster) else [None]
    for node in nodes:
        kwargs = {"target_nodes": node} if node is not None else {}
        rows = await client.client_list(**kwargs)  # type: ignore[arg-type]
        for row in rows:
            if row.get("name") == CLIENT_NAME:
                await client.client_kill_filter(_id=row["id"], **kwargs)  # type: ignore[arg-type]
        if node is not None:
            break  # one node is enough to break the whole cache


@pytest.mark.parametrize("change", ["after the cache noticed", "before the cache noticed"])
async def test_a_killed_invalidation_connection_empties_and_bypasses_the_cache(
    cached: Callable[..., SessionStore], make_store: StoreFactory, backend: Backend, change: str
) -> None:
    reader, other = cached(), make_store()
    s = await other.create("alice")
    token = s.token or ""
    await warm(reader, token)
    await _kill_tracking(backend)
    if change.startswith("before"):  # its announcement is lost with the connection
        await other.delete("alice", token)
    await until(lambda: not _connected(reader), "the cache to notice")
    assert _stats(reader).entries == 0
    if change.startswith("after"):  # whether the channel is still down or back
        await other.delete("alice", token)
    assert await reader.resolve(token) is None
    # It comes back by itself, and serves again.
    s2 = await other.create("alice")
    await warm(reader, s2.token or "")


# -- touches ----------------------------------------------------------------


async def test_a_cached_hit_due_a_touch_sends_it_without_waiting_for_it(
    cached: Callable[..., SessionStore], make_store: StoreFactory
) -> None:
    store = cached(touch_interval=0.2)
    s = await store.create("alice")
    token = s.token or ""
    await warm(store, token)
    first = (await make_store().list("alice"))[0].last_active_at
    await asyncio.sleep(0.25)
    hit = await store.resolve(token)  # due: answered from memory, touch sent
    assert hit is not None and hit.last_active_at == first

    async def touched() -> bool:
        return (await make_store().list("alice"))[0].last_active_at > first

    deadline = time.monotonic() + 3
    while not await touched():
        assert time.monotonic() < deadline, "the touch never reached the server"
        await asyncio.sleep(0.01)


async def test_cached_reads_keep_an_idle_session_alive(
    cached: Callable[..., SessionStore], make_store: StoreFactory
) -> None:
    store = cached(idle_timeout=0.6)
    s = await store.create("alice")
    token = s.token or ""
    await warm(store, token)
    end = time.monotonic() + 1.5  # well past the idle timeout
    while time.monotonic() < end:
        assert await store.resolve(token) is not None
        await asyncio.sleep(0.02)
    assert _stats(store).hits > 10
    assert await make_store(idle_timeout=0.6).list("alice") != []
    await asyncio.sleep(0.8)  # idle now: it ends
    assert await store.resolve(token) is None


# -- bounds -----------------------------------------------------------------


@pytest.mark.one_server  # memory in this process: the second server adds nothing
async def test_memory_stays_within_its_bound_under_a_million_distinct_tokens(
    server_url: str,
) -> None:
    """Not a property of the server: run on one."""
    client = aioredis.Redis.from_url(server_url)
    store = SessionStore(client, prefix="bound", near_cache=NearCache(max_entries=1000))
    try:
        s = await store.create("alice")
        await warm(store, s.token or "")
        near = store._near
        assert near is not None
        ticket = near.ticket()
        assert ticket is not None
        bucket = keys.token_bucket(s.token)
        assert bucket is not None
        raw = b"\x01" + b"0" * 64  # only its user digest is read
        for i in range(1_000_000):
            session = msgspec.structs.replace(s, id=f"{i:024}")
            near.keep(ticket, f"t{i}", bucket, raw, session)
            near.lookup(f"u{i}")  # and a miss for a token never seen
        assert _stats(store).entries == 1000
        # Every structure it holds is bounded by the entries (or the log's length).
        assert len(near._by_key) == 1000
        assert sum(len(t) for t in near._by_groups.values()) == 1000
        assert len(near._log) <= 4096
        # The newest thousand are the ones kept (least recently used go first).
        assert (await store.resolve("t999999") or s).id == f"{999999:024}"
        assert await store.resolve("t998999") is None
    finally:
        await store.aclose()
        await client.aclose()


# -- the web layer ----------------------------------------------------------


async def test_the_web_middleware_resolves_through_the_cache_and_sees_a_revocation(
    cached: Callable[..., SessionStore], make_store: StoreFactory
) -> None:
    store, other = cached(), make_store()
    s = await other.create("alice", ["admin"])
    await warm(store, s.token or "")
    app = starlette_app(store)
    async with client_for(app) as http:
        headers = {"Session": s.token or ""}
        hits = _stats(store).hits
        for _ in range(5):
            assert (await http.get("/admin", headers=headers)).status_code == 200
        assert _stats(store).hits >= hits + 5
        await invalidated_after(store, other.remove_groups("alice", "admin"))
        assert (await http.get("/admin", headers=headers)).status_code == 403
        await invalidated_after(store, other.delete("alice", s.token or ""))
        assert (await http.get("/private", headers=headers)).status_code == 401


@pytest.mark.backends("cluster")
async def test_a_topology_change_empties_the_cache_until_it_listens_to_the_new_primaries(
    cached: Callable[..., SessionStore], make_store: StoreFactory
) -> None:
    store, other = cached(), make_store()
    s = await other.create("alice")
    await warm(store, s.token or "")
    await store.transport.reload()  # what MOVED, a failover or a refused node lead to
    await until(lambda: _stats(store).entries == 0, "the cache to empty")
    await other.delete("alice", s.token or "")
    assert await store.resolve(s.token or "") is None
    s2 = await other.create("alice")
    await warm(store, s2.token or "")  # and it serves again


async def test_metrics_count_hits_misses_and_invalidations(
    cached: Callable[..., SessionStore], make_store: StoreFactory
) -> None:
    registry = CollectorRegistry()
    store, other = cached(metrics=PrometheusMetrics(registry)), make_store()
    s = await other.create("alice")
    await warm(store, s.token or "")
    for _ in range(3):
        await store.resolve(s.token or "")
    await invalidated_after(store, other.add_groups("alice", "x"))

    def value(name: str, **labels: str) -> float:
        got = registry.get_sample_value(f"sessionkit_{name}_total", labels)
        return got or 0.0

    stats = _stats(store)
    assert value("near_cache_lookups", result="hit") == stats.hits >= 4
    assert value("near_cache_lookups", result="miss") == stats.misses >= 1
    assert value("near_cache_invalidations") == stats.invalidations >= 1
