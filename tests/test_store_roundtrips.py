"""One round trip per operation (a single EVALSHA), and transparent recovery
when the server has lost its scripts."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
import redis.asyncio as aioredis

from sessionkit import SessionStore
from sessionkit._scripts import Scripts
from tests.conftest import Backend

# Commands a client can send that no script of ours may hide behind.
CLIENT_ONLY = {"eval", "evalsha", "script", "multi", "exec", "watch"}


@pytest.fixture
async def probe(server_url: str, prefix: str) -> AsyncIterator[tuple[SessionStore, Any]]:
    client = aioredis.Redis.from_url(server_url, client_name=f"probe-{prefix}")
    admin = aioredis.Redis.from_url(server_url)
    store = SessionStore(client, prefix=prefix)
    await store.load_scripts()
    await client.ping()  # open the store's connection before measuring
    yield store, admin
    await client.aclose()
    await admin.aclose()


async def _measure(admin: Any, op: Any, name: str, marker: str) -> tuple[list[str], dict[str, int]]:
    """What the store's connection sent while `op` ran (from MONITOR, which
    tells client commands from those scripts run), and the command stats."""
    (addr,) = [c["addr"] for c in await admin.client_list() if c.get("name") == name]
    await admin.config_resetstat()
    sent: list[str] = []
    async with admin.monitor() as monitor:
        await op
        await admin.echo(marker)
        while True:
            cmd = await monitor.next_command()
            if marker in cmd["command"]:
                break
            if f"{cmd.get('client_address')}:{cmd.get('client_port')}" == addr:
                sent.append(cmd["command"].split()[0].lower())
    stats = await admin.info("commandstats")
    calls = {k.removeprefix("cmdstat_"): v["calls"] for k, v in stats.items()}
    return sent, calls


@pytest.mark.server
async def test_every_operation_is_one_evalsha(probe: tuple[SessionStore, Any], prefix: str) -> None:
    store, admin = probe
    s = await store.create("alice", ["a"])
    other = await store.create("alice")
    token = s.token or ""
    ops: dict[str, Callable[[], Awaitable[Any]]] = {
        "create": lambda: store.create("alice", ["b"], user_agent="curl/8", data={"x": 1}),
        "get": lambda: store.get("alice", token),
        "resolve": lambda: store.resolve(token),
        "list": lambda: store.list("alice"),
        "add_groups": lambda: store.add_groups("alice", ["c", "d"]),
        "remove_groups": lambda: store.remove_groups("alice", "c"),
        "delete_by_id": lambda: store.delete_by_id("alice", other.id),
        "delete": lambda: store.delete("alice", token),
        "delete_all": lambda: store.delete_all("alice"),
    }
    for name, op in ops.items():
        sent, calls = await _measure(admin, op(), f"probe-{prefix}", f"end-of-{name}")
        assert sent == ["evalsha"], name
        assert calls.get("evalsha") == 1, (name, calls)
        assert not (set(calls) & CLIENT_ONLY) - {"evalsha"}, (name, calls)


async def test_scripts_are_reloaded_after_script_flush(
    store: SessionStore, backend: Backend
) -> None:
    s = await store.create("alice", ["a"])
    await backend.flush_scripts()
    assert await backend.client.script_exists(Scripts.get.sha) == [False]
    got = await store.resolve(s.token or "")
    assert got is not None and got.access_groups == ["a"]
    await backend.flush_scripts()
    assert await store.add_groups("alice", "b") == 1
    await backend.flush_scripts()
    assert [x.access_groups for x in await store.list("alice")] == [["a", "b"]]


def test_each_script_carries_only_the_helpers_it_uses() -> None:
    from sessionkit._scripts import Scripts

    # The read every request makes calls no helper at all: just constants.
    assert "local function" not in Scripts.get.source
    assert "local LAYOUT_BYTE = 1" in Scripts.get.source
    for script in (Scripts.create, Scripts.delete, Scripts.delete_all, Scripts.groups):
        assert "local function emit" in script.source, script.name
    assert "local function emit" not in Scripts.list.source  # a read writes no event
    assert "local function batched" in Scripts.list.source
    # Helpers come before the script's own code, each defined once.
    for script in (Scripts.create, Scripts.list, Scripts.groups):
        assert script.source.count("local function clock()") == 1, script.name
    # A create defines one function of its own, which makes the others when
    # called; its constants are plain locals before it.
    head, wrapper, _ = Scripts.create.source.partition("local function helpers(")
    assert wrapper and "local function" not in head and "local LAYOUT_BYTE = 1" in head
    assert "local function helpers" not in Scripts.delete.source  # defined as they are


_LIB = """-- a library
local K = 1
-- f's comment
local function f() return K end
local function g() return f() + 1 end
local function unused() return 0 end
"""


@pytest.mark.server
async def test_a_script_calling_helpers_gets_its_functions_made_only_then(
    server_url: str,
) -> None:
    from sessionkit._scripts import assemble

    body = "if ARGV[1] == 'made' then return helpers().g() end\nreturn K\n"
    source = assemble(_LIB, body)
    head, _, rest = source.partition("local function helpers(")
    assert head.strip() == "local K = 1"  # constants stay plain locals
    assert "local function f()" in rest and "local function g()" in rest
    assert "unused" not in source and "f's comment" not in source
    # Without helpers(), the same library is defined as it always was.
    plain = assemble(_LIB, "return g()\n")
    assert "local function g()" in plain and "helpers" not in plain
    client = aioredis.Redis.from_url(server_url)
    try:
        assert await client.eval(source, 0, "made") == 2
        assert await client.eval(source, 0, "not made") == 1
        assert await client.eval(plain, 0) == 2
    finally:
        await client.aclose()


@pytest.mark.server
async def test_helpers_use_their_own_constants_and_the_time_the_script_hands_them(
    server_url: str,
) -> None:
    """`helpers` captures none of the script's locals (each one captured
    would cost every call, made or not): it defines its own copies of the
    constants, and takes the script's clock as its arguments."""
    from importlib import resources

    from sessionkit._scripts import assemble

    lib = (resources.files("sessionkit") / "lua" / "_lib.lua").read_text("utf-8")
    source = assemble(_LIB, "K = 5\nreturn {K, helpers().f()}\n")
    timed = assemble(lib, "return {helpers(7, '0000000000007123').clock()}\n")
    client = aioredis.Redis.from_url(server_url)
    try:
        assert await client.eval(source, 0) == [5, 1]  # the script's K changed, not theirs
        assert await client.eval(timed, 0) == [7, b"0000000000007123"]  # no TIME of their own
    finally:
        await client.aclose()


@pytest.mark.server
async def test_a_create_below_its_cap_makes_no_helper_and_one_at_it_does(
    server_url: str, prefix: str
) -> None:
    """The common create (below the cap, its bucket's event counter
    trusted) never calls helpers(); one at the cap, or whose counter is
    lost, does. Shown with a create script whose helpers() fails."""
    from sessionkit import _keys, _resp, _scripts
    from sessionkit._model import encode_body

    source = Scripts.create.source.replace(
        "local function helpers(clock_ms, clock_us16)",
        "local function helpers(clock_ms, clock_us16) error('helpers made')",
        1,
    )
    assert "error('helpers made')" in source
    client = aioredis.Redis.from_url(server_url)
    store = SessionStore(client, prefix=prefix, max_sessions_per_user=2)
    sha = await client.script_load(source)
    digest, bucket = _keys.user_digest("ann")

    async def create() -> Any:
        """The store's own create call for ann, run by the script above."""
        sid = _keys.session_id(_keys.new_token(bucket))
        body = encode_body("ann", None, {})
        call = _scripts.create_call(store.settings, "ann", digest, bucket, sid, body, ())
        _, _, numkeys, *args = _resp.unpack(call.payload)
        return await client.evalsha(sha, int(numkeys), *args)

    try:
        await store.create("ann")  # the bucket's stream and counter made
        assert isinstance(await create(), bytes)  # below the cap
        with pytest.raises(aioredis.ResponseError, match="helpers made"):
            await create()  # at the cap: evicts, with the helpers
        await store.delete_all("ann")
        await client.delete(_keys.events_key(prefix, bucket) + ":n")
        with pytest.raises(aioredis.ResponseError, match="helpers made"):
            await create()  # below the cap, the counter lost
    finally:
        await client.aclose()


@pytest.mark.server
async def test_lua_errors_name_the_line_of_the_scripts_own_file(server_url: str) -> None:
    from importlib import resources

    import redis.asyncio as aioredis

    from sessionkit._scripts import assemble

    lib = (resources.files("sessionkit") / "lua" / "_lib.lua").read_text("utf-8")
    body = "-- a script\nlocal stamp = ms13(now_ms())\nerror('boom at ' .. stamp)\n"
    source = assemble(lib, body)
    assert "local function ms13" in source and "local function emit" not in source
    client = aioredis.Redis.from_url(server_url)
    try:
        with pytest.raises(Exception, match=r"user_script:3: boom at \d{13}"):
            await client.eval(source, 0)
    finally:
        await client.aclose()
