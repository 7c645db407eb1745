"""Automatic pipelining on a single server: concurrent calls share writes,
each caller still gets exactly its own reply, and failures stay contained."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from sessionkit import BackendUnavailable, SessionKitError, SessionStore
from sessionkit import _keys as keys
from sessionkit.server import EmbeddedServer


@pytest.fixture
async def named(server_url: str, prefix: str) -> AsyncIterator[tuple[SessionStore, aioredis.Redis]]:
    client = aioredis.Redis.from_url(server_url, client_name=f"pl-{prefix}", max_connections=200)
    admin = aioredis.Redis.from_url(server_url)
    yield SessionStore(client, prefix=prefix), admin
    await client.aclose()
    await admin.aclose()


async def _connections(admin: aioredis.Redis, name: str) -> int:
    return sum(1 for c in await admin.client_list() if c.get("name") == name)


@pytest.mark.server
async def test_concurrent_calls_share_connections_and_get_their_own_replies(
    named: tuple[SessionStore, aioredis.Redis], prefix: str, server_url: str
) -> None:
    store, admin = named
    made = await asyncio.gather(*(store.create(f"user{i}", [f"g{i}"]) for i in range(300)))
    got = await asyncio.gather(*(store.resolve(s.token or "") for s in made))
    for i, (s, g) in enumerate(zip(made, got, strict=True)):
        assert g is not None and g.id == s.id and g.user_id == f"user{i}"
        assert g.access_groups == [f"g{i}"]
    assert await _connections(admin, f"pl-{prefix}") <= 4

    # The same calls without pipelining need a connection each.
    unpiped = SessionStore(
        aioredis.Redis.from_url(server_url, client_name=f"np-{prefix}", max_connections=200),
        prefix=prefix,
        pipelining=False,
    )
    try:
        await asyncio.gather(*(unpiped.resolve(s.token or "") for s in made[:150]))
        assert await _connections(admin, f"np-{prefix}") > 4
    finally:
        await unpiped.client.aclose()


@pytest.mark.server
async def test_an_error_reply_fails_only_its_own_call(
    named: tuple[SessionStore, aioredis.Redis], prefix: str
) -> None:
    store, admin = named
    good = [await store.create("alice") for _ in range(5)]
    bad = await store.create("bob")
    _, bucket = keys.user_digest("bob")
    key = keys.session_key(prefix, bucket, bad.id)
    await admin.delete(key)
    await admin.hset(key, "x", "y")  # the script's GET now fails with WRONGTYPE
    calls = [store.resolve(s.token or "") for s in good]
    calls.insert(2, store.resolve(bad.token or ""))
    results = await asyncio.gather(*calls, return_exceptions=True)
    assert isinstance(results[2], SessionKitError) and "WRONGTYPE" in results[2].message
    ok = [r for i, r in enumerate(results) if i != 2]
    assert [getattr(r, "id", None) for r in ok] == [s.id for s in good]


@pytest.mark.server
async def test_lost_scripts_are_reloaded_inside_a_batch(
    named: tuple[SessionStore, aioredis.Redis],
) -> None:
    store, admin = named
    made = [await store.create(f"u{i}") for i in range(20)]
    await admin.script_flush()
    got = await asyncio.gather(*(store.resolve(s.token or "") for s in made))
    assert [g.id if g else None for g in got] == [s.id for s in made]


@pytest.mark.server
async def test_cancelled_callers_leave_the_connection_in_step(
    named: tuple[SessionStore, aioredis.Redis],
) -> None:
    store, _ = named
    made = [await store.create(f"c{i}") for i in range(50)]
    for delay in (0, 0, 0.0005, 0.001, 0.002):
        tasks = [asyncio.ensure_future(store.resolve(s.token or "")) for s in made]
        await asyncio.sleep(delay)  # cancelled queued, leading, or mid-read
        for t in tasks[::3]:
            t.cancel()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        # The calls that were not cancelled get their own sessions, whoever
        # was leading their batch.
        for i, (s, r) in enumerate(zip(made, results, strict=True)):
            if i % 3:
                assert getattr(r, "id", None) == s.id, r
    got = await asyncio.gather(*(store.resolve(s.token or "") for s in made))
    assert [g.id if g else None for g in got] == [s.id for s in made]


@pytest.mark.server
@pytest.mark.usefixtures("drops_connections")
async def test_a_server_that_dies_fails_the_whole_batch_cleanly() -> None:
    server = EmbeddedServer()
    server.start()
    store = SessionStore.from_url(server.url, socket_timeout=1.0)
    try:
        made = [await store.create(f"u{i}") for i in range(10)]
        server.kill()
        results = await asyncio.gather(
            *(store.resolve(s.token or "") for s in made), return_exceptions=True
        )
        assert all(isinstance(r, BackendUnavailable) for r in results)
    finally:
        await store.aclose()
        server.stop()
