"""Bad input raises a typed error before anything is written; an unreachable
server raises `BackendUnavailable`, never a raw redis-py exception."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from sessionkit import BackendUnavailable, SessionKitError, SessionStore, ValidationError
from sessionkit import _keys as keys
from sessionkit.server import EmbeddedServer, free_port
from tests.conftest import Backend, StoreFactory

BAD_USER_IDS: list[Any] = ["", None, 42, b"bytes", ["x"], "x" * 1025, "é" * 513, "\ud800"]
BAD_GROUPS: list[Any] = [
    42,
    None,
    b"bytes",
    {"a": 1},
    [""],
    ["ok", 3],
    ["x" * 257],
    [["nested"]],
    ["\udcff"],
    ["g"] * 1 + [str(i) for i in range(1001)],
]
BAD_DATA: list[Any] = [
    "text",
    [1, 2],
    {"x": object()},
    {"x": "y" * (64 * 1024)},
    {"x": {1, 2}},
    {1: "int key"},
    {"x": float("inf")},
    {"x": "\udcff"},
]


@pytest.mark.backends("server")  # input checks: the backend adds nothing
@pytest.mark.parametrize("user_id", BAD_USER_IDS)
async def test_bad_user_ids_are_validation_errors(
    store: SessionStore, backend: Backend, prefix: str, user_id: Any
) -> None:
    calls: list[Callable[[], Awaitable[Any]]] = [
        lambda: store.create(user_id),
        lambda: store.get(user_id, "t"),
        lambda: store.list(user_id),
        lambda: store.delete(user_id, "t"),
        lambda: store.delete_by_id(user_id, "i"),
        lambda: store.delete_all(user_id),
        lambda: store.add_groups(user_id, "g"),
        lambda: store.remove_groups(user_id, "g"),
    ]
    for call in calls:
        with pytest.raises(ValidationError, match="user_id") as info:
            await call()
        assert isinstance(info.value, ValueError)
        assert info.value.code == "validation_error" and info.value.origin == "client"
    assert await backend.keys(prefix) == []


@pytest.mark.backends("server")  # input checks: the backend adds nothing
@pytest.mark.parametrize("groups", BAD_GROUPS)
async def test_bad_groups_are_validation_errors_and_change_nothing(
    store: SessionStore, backend: Backend, prefix: str, groups: Any
) -> None:
    s = await store.create("alice", ["keep"])
    before = await backend.dump(prefix)
    with pytest.raises(ValidationError, match="groups"):
        await store.create("alice", groups)
    with pytest.raises(ValidationError, match="groups"):
        await store.add_groups("alice", groups)
    with pytest.raises(ValidationError, match="groups"):
        await store.remove_groups("alice", groups)
    assert await backend.dump(prefix) == before
    got = await store.get("alice", s.token or "")
    assert got is not None and got.access_groups == ["keep"]


@pytest.mark.backends("server")  # input checks: the backend adds nothing
@pytest.mark.parametrize("data", BAD_DATA)
async def test_bad_data_is_a_validation_error(
    store: SessionStore, backend: Backend, prefix: str, data: Any
) -> None:
    with pytest.raises(ValidationError, match="data"):
        await store.create("alice", data=data)
    assert await backend.keys(prefix) == []


async def test_bad_user_agent_is_an_error_and_a_long_one_is_cut(store: SessionStore) -> None:
    with pytest.raises(ValidationError, match="user_agent"):
        await store.create("alice", user_agent=42)  # type: ignore[arg-type]
    s = await store.create("alice", user_agent="Mozilla/5.0 " + "x" * 5000)
    assert s.user_agent is not None
    stored = await store.client.get(
        keys.session_key(store.prefix, keys.user_digest("alice")[1], s.id)
    )
    assert stored is not None and b"x" * 500 in stored and b"x" * 501 not in stored


@pytest.mark.backends("server")  # input checks: the backend adds nothing
@pytest.mark.parametrize(
    "options",
    [
        {"lifetime": 0},
        {"lifetime": -5},
        {"lifetime": "1h"},
        {"lifetime": float("nan")},
        {"idle_timeout": 0},
        {"max_sessions_per_user": 0},
        {"max_sessions_per_user": 1.5},
        {"max_sessions_per_user": True},
        {"touch_interval": -1},
    ],
)
async def test_bad_options_are_validation_errors(
    make_store: StoreFactory, options: dict[str, Any]
) -> None:
    with pytest.raises(ValidationError) as info:
        make_store(**options)
    assert isinstance(info.value, ValueError)
    assert next(iter(options)) in str(info.value)


def test_a_misspelt_option_fails_the_type_check_and_the_call(
    server_url: str, tmp_path: Path
) -> None:
    import redis.asyncio as aioredis
    from mypy import api

    program = tmp_path / "typo.py"
    program.write_text(
        "import redis.asyncio as aioredis\n"
        "from sessionkit import SessionStore\n"
        "SessionStore(aioredis.Redis(), lifetme=10)\n"
        "SessionStore.from_url('redis://x', idle_timout=5)\n"
    )
    out, _, status = api.run(["--strict", str(program)])
    assert status == 1, out
    assert out.count("Unexpected keyword argument") == 2, out
    with pytest.raises(TypeError, match="lifetme"):
        SessionStore(aioredis.Redis.from_url(server_url), lifetme=10)  # type: ignore[call-arg]


async def test_error_entries_have_the_platform_shape(store: SessionStore) -> None:
    with pytest.raises(SessionKitError) as info:
        await store.create("")
    entry = info.value.to_entry()
    assert set(entry) == {"origin", "code", "message", "details"}
    assert entry["origin"] == "client" and entry["code"] == "validation_error"
    assert entry["details"] == {"parameter": "user_id"}


async def test_unreachable_server_raises_backend_unavailable_quickly() -> None:
    port = free_port()
    store = SessionStore.from_url(f"redis://127.0.0.1:{port}", socket_timeout=1.0)
    started = time.monotonic()
    try:
        for op in (store.create("alice"), store.list("alice"), store.add_groups("alice", "g")):
            with pytest.raises(BackendUnavailable) as info:
                await op
            assert info.value.code == "backend_unavailable"
            assert info.value.origin == "server"
            assert info.value.__cause__ is not None
    finally:
        await store.aclose()
    assert time.monotonic() - started < 10


@pytest.mark.usefixtures("drops_connections")
async def test_a_server_that_goes_away_raises_backend_unavailable() -> None:
    server = EmbeddedServer()
    server.start()
    store = SessionStore.from_url(server.url, socket_timeout=1.0)
    try:
        s = await store.create("alice")
        server.stop()
        with pytest.raises(BackendUnavailable):
            await store.resolve(s.token or "")
    finally:
        await store.aclose()
        server.stop()


async def test_server_errors_are_wrapped(server_url: str) -> None:
    client = aioredis.Redis.from_url(server_url)
    store = SessionStore(client, prefix="errors")
    try:
        s = await store.create("alice")
        # Turn the session key into a hash: the script's GET now fails on the server.
        from sessionkit import _keys as keys

        _, bucket = keys.user_digest("alice")
        key = keys.session_key("errors", bucket, s.id)
        await client.delete(key)
        await client.hset(key, "x", "y")
        with pytest.raises(SessionKitError) as info:
            await store.resolve(s.token or "")
        assert info.value.code == "backend_error" and info.value.origin == "server"
        assert "WRONGTYPE" in info.value.message
    finally:
        await client.delete(*[k async for k in client.scan_iter(match="errors:*")])
        await client.aclose()


async def test_unsupported_url_scheme_is_a_validation_error() -> None:
    with pytest.raises(ValidationError, match="scheme"):
        SessionStore.from_url("http://localhost:6379")
    with pytest.raises(ValidationError, match="lifetime"):
        SessionStore.from_url("redis://localhost:6379", lifetime=-1)
