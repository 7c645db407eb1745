"""Bounded work: every script's work has a stated cap, and a call beyond a
cap is refused whole. On the real server (and cluster and fakeredis where
the sizes allow)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as aioredis

from sessionkit import LimitExceeded, SessionStore, ValidationError
from sessionkit.defaults import (
    EVENT_BYTES,
    MAX_GROUPS_JSON_BYTES,
    MAX_GROUPS_PER_SESSION,
    MAX_SESSIONS_PER_USER,
    MAX_SESSIONS_PER_USER_LIMIT,
)
from sessionkit.events import EventConsumer
from sessionkit.nodes import AddAccessGroupToUserSession
from tests.conftest import Backend, StoreFactory, drain, stream_of

UA = (
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0 Safari/537"
)


async def fill(store: SessionStore, user: str, n: int, **options: Any) -> None:
    """Give `user` n sessions, many creates in flight at once."""
    for start in range(0, n, 50):
        await asyncio.gather(
            *(store.create(user, ["base"], user_agent=UA, **options)
              for _ in range(start, min(n, start + 50)))
        )  # fmt: skip


@pytest.fixture
async def real(server_url: str) -> AsyncIterator[Backend]:
    """The real server alone, for the tests at the hard maximum (10,000
    sessions of one user; what they check is the server's work). Its calls
    may take seconds when other workers load the machine (an add of 255
    long groups to 10,000 sessions writes 300 MB): a patient client."""
    client = aioredis.Redis.from_url(server_url, socket_timeout=60)
    yield Backend("server", client)
    await client.aclose()


# -- sessions per user --------------------------------------------------------


def test_sessions_per_user_are_capped_by_default(backend: Backend) -> None:
    assert SessionStore(backend.client).max_sessions_per_user == MAX_SESSIONS_PER_USER == 100


@pytest.mark.backends("server")  # an input check: the backend adds nothing
@pytest.mark.parametrize("bad", [None, 0, -1, MAX_SESSIONS_PER_USER_LIMIT + 1, 1.5, True, "10"])
def test_a_cap_outside_1_to_10000_is_refused(backend: Backend, bad: object) -> None:
    with pytest.raises(ValidationError) as info:
        SessionStore(backend.client, max_sessions_per_user=bad)  # type: ignore[arg-type]
    assert "max_sessions_per_user" in info.value.message and "1 to 10,000" in info.value.message
    assert info.value.details["parameter"] == "max_sessions_per_user"


@pytest.mark.parametrize("cap", [1, 100])
async def test_a_create_at_the_cap_evicts_the_oldest_first(
    make_store: StoreFactory, cap: int
) -> None:
    store = make_store(max_sessions_per_user=cap)
    made = [await store.create("ann") for _ in range(cap + 3)]
    assert [s.id for s in await store.list("ann")] == [s.id for s in made[3:]]
    for gone in made[:3]:
        assert await store.resolve(gone.token or "") is None


async def test_a_store_with_a_lower_cap_evicts_every_session_over_it_at_once(
    make_store: StoreFactory,
) -> None:
    """A service that lowers its cap: the next create evicts all the
    oldest sessions over it in one step (here 78, more than one DEL of the
    script takes), and reports each."""
    roomy = make_store(max_sessions_per_user=100)
    made = [await roomy.create("ann") for _ in range(80)]
    store = make_store(max_sessions_per_user=3)
    watch = EventConsumer(store, group="g", consumer="c", block=0.05)
    await watch.setup()
    newest = await store.create("ann")
    assert [s.id for s in await store.list("ann")] == [made[-2].id, made[-1].id, newest.id]
    for gone in made[:78]:
        assert await store.resolve(gone.token or "") is None
    [evicted, created] = await drain(watch)
    assert evicted.type == "evicted" and sorted(evicted.session_ids) == sorted(
        s.id for s in made[:78]
    )
    assert created.session_ids == (newest.id,)


@pytest.mark.server
async def test_at_the_hard_maximum_a_create_evicts_exactly_the_oldest(
    real: Backend, prefix: str
) -> None:
    store = SessionStore(real.client, prefix=prefix, max_sessions_per_user=10_000)
    first = await store.create("max")
    await fill(store, "max", MAX_SESSIONS_PER_USER_LIMIT - 1)
    watch = EventConsumer(store, group="g", consumer="c", block=0.05)
    await watch.setup()
    newest = await store.create("max")
    listed = await store.list("max")
    assert len(listed) == MAX_SESSIONS_PER_USER_LIMIT
    assert first.id not in {s.id for s in listed} and listed[-1].id == newest.id
    assert [(e.type, e.session_ids) for e in await drain(watch)] == [
        ("evicted", (first.id,)),
        ("created", (newest.id,)),
    ]


def _evalsha_stats(info: dict[str, Any]) -> tuple[int, int]:
    stats = info["cmdstat_evalsha"]
    return int(stats["calls"]), int(stats["usec"])


@pytest.mark.server
async def test_a_create_costs_the_same_at_any_cap(real: Backend, prefix: str) -> None:
    """Server time per create at a full cap of 10,000 against a full cap of
    10 (INFO commandstats, same run; the bench has the exact figure)."""
    admin: Any = real.client
    cost = {}
    for cap in (10, MAX_SESSIONS_PER_USER_LIMIT):
        store = SessionStore(admin, prefix=prefix, max_sessions_per_user=cap)
        await fill(store, f"cap{cap}", cap)
        before = _evalsha_stats(await admin.info("commandstats"))
        for _ in range(300):
            await store.create(f"cap{cap}", ["base"], user_agent=UA)  # evicts one
        after = _evalsha_stats(await admin.info("commandstats"))
        cost[cap] = (after[1] - before[1]) / (after[0] - before[0])
    # Reading every session to find the oldest made this ~60x; a generous
    # bound, as the machine is shared.
    assert cost[MAX_SESSIONS_PER_USER_LIMIT] <= 3 * cost[10], cost


# -- access groups --------------------------------------------------------------


async def test_the_257th_group_is_refused_and_nothing_changes(
    store: SessionStore, backend: Backend, prefix: str
) -> None:
    full = [f"g{i}" for i in range(MAX_GROUPS_PER_SESSION)]
    await store.create("gus", full[:100])
    await store.create("gus", full)  # at the cap already
    await store.create("gus")
    before = await backend.dump(prefix)
    with pytest.raises(LimitExceeded) as info:
        await store.add_groups("gus", ["new", "g5"])
    assert info.value.code == "limit_exceeded" and isinstance(info.value, ValidationError)
    assert info.value.details == {"limit": "groups_per_session", "maximum": 256}
    assert await backend.dump(prefix) == before  # no session changed, no event written
    # Groups the full session has already are no change to it.
    assert await store.add_groups("gus", full[:3]) == 1
    assert await store.remove_groups("gus", "g200") == 1
    assert await store.add_groups("gus", "new") == 3  # the full one has room again
    at_cap = [s.access_groups for s in await store.list("gus") if len(s.access_groups) == 256]
    assert at_cap == [sorted({*full, "new"} - {"g200"})]


@pytest.mark.backends("server")  # an input check: the backend adds nothing
@pytest.mark.parametrize("call", ["create", "add_groups", "remove_groups"])
async def test_more_than_256_groups_in_one_call_are_refused(
    store: SessionStore, backend: Backend, prefix: str, call: str
) -> None:
    await store.create("hal", "g")
    before = await backend.dump(prefix)
    too_many = [f"g{i}" for i in range(MAX_GROUPS_PER_SESSION + 1)]
    with pytest.raises(LimitExceeded) as info:
        if call == "create":
            await store.create("hal", too_many)
        else:
            await getattr(store, call)("hal", too_many)
    assert info.value.details["limit"] == "groups_per_call"
    assert await backend.dump(prefix) == before
    # Repeats are one group: 300 entries naming one group are fine.
    assert await store.add_groups("hal", ["x"] * 300) == 1


@pytest.mark.backends("server")  # an input check: the backend adds nothing
async def test_group_keys_beyond_32_kib_in_one_call_are_refused(store: SessionStore) -> None:
    with pytest.raises(LimitExceeded) as info:
        await store.create("ida", [f"{i:03d}" + "x" * 250 for i in range(200)])
    assert info.value.details == {
        "parameter": "access_groups",
        "limit": "group_bytes_per_call",
        "maximum": MAX_GROUPS_JSON_BYTES,
    }


@pytest.mark.backends("server")  # an input check: the backend adds nothing
async def test_a_group_key_with_nul_is_refused(store: SessionStore) -> None:
    with pytest.raises(ValidationError, match="NUL"):
        await store.create("ida", ["a\0b"])


async def test_the_node_reports_the_group_cap_on_its_errors_link(store: SessionStore) -> None:
    await store.create("jo", [f"g{i}" for i in range(MAX_GROUPS_PER_SESSION)])
    node = AddAccessGroupToUserSession(
        store, error_management="manual", user_id="inputObject.u", access_groups="'one-more'"
    )
    result = await node.run({"u": "jo"})
    assert result.link == "errors"
    [entry] = result.value
    assert (entry["origin"], entry["code"]) == ("client", "limit_exceeded")
    assert entry["details"]["limit"] == "groups_per_session"


# -- event size -------------------------------------------------------------------


async def _entries(
    backend: Backend, stream: str, after: bytes = b"-"
) -> list[tuple[bytes, dict[bytes, bytes]]]:
    """The stream's entries after the entry id `after`."""
    client: Any = backend.client
    return list(await client.xrange(stream, min=after if after == b"-" else b"(" + after))


def _entry_bytes(fields: dict[bytes, bytes]) -> int:
    return sum(len(k) + len(v) for k, v in fields.items())


@pytest.mark.server
async def test_events_of_a_change_to_10000_sessions_fit_in_64_kib_entries(
    real: Backend, prefix: str
) -> None:
    user = "u" * 1024  # the longest user id
    store = SessionStore(real.client, prefix=prefix, max_sessions_per_user=10_000)
    backend = real
    await fill(store, user, MAX_SESSIONS_PER_USER_LIMIT)
    ids = {s.id for s in await store.list(user)}
    # As many groups as fit beside "base", as long as one call may carry
    # (32 KiB of JSON).
    groups = [f"{i:03d}" + "x" * 118 for i in range(MAX_GROUPS_PER_SESSION - 1)]
    stream = stream_of(prefix, user)
    last = (await _entries(backend, stream))[-1][0]
    assert await store.add_groups(user, groups) == MAX_SESSIONS_PER_USER_LIMIT
    assert await store.delete_all(user) == MAX_SESSIONS_PER_USER_LIMIT
    written = await _entries(backend, stream, last)
    assert max(_entry_bytes(f) for _, f in written) <= EVENT_BYTES
    for kind in (b"groups_added", b"all_deleted"):
        mine = [f for _, f in written if f[b"type"] == kind]
        assert len(mine) > 1  # one entry could not hold them
        named = [sid for f in mine for sid in f[b"sessions"].decode().split()]
        assert sorted(named) == sorted(ids)  # every session once


@pytest.mark.backends("server", "cluster")  # thousands of sessions: too slow on fakeredis's Lua
async def test_a_change_to_many_sessions_is_one_event_per_entry_in_order(
    make_store: StoreFactory, prefix: str
) -> None:
    """What a consumer sees of a split event: several events of one type,
    one after the other, naming each session once."""
    store = make_store(max_sessions_per_user=3000)
    await fill(store, "kim", 3000)
    watch = EventConsumer(store, group="g", consumer="c", block=0.05, count=10_000)
    await watch.setup()
    assert await store.delete_all("kim") == 3000
    events = await drain(watch)
    assert {e.type for e in events} == {"all_deleted"} and len(events) >= 2
    assert len({sid for e in events for sid in e.session_ids}) == 3000
    assert sum(len(e.session_ids) for e in events) == 3000


# -- layout version ----------------------------------------------------------------


async def test_a_session_of_an_unknown_layout_is_never_read_nor_rewritten(
    store: SessionStore, backend: Backend, prefix: str
) -> None:
    old = await store.create("lou", "g")
    other = await store.create("lou", "g")
    [key] = [k for k in await backend.keys(prefix) if k.endswith(old.id)]
    client: Any = backend.client
    await client.setrange(key, 0, b"\x02")  # a later layout
    future = await client.get(key)
    assert await store.resolve(old.token or "") is None
    assert await store.get("lou", old.token or "") is None
    assert [s.id for s in await store.list("lou")] == [other.id]
    await store.add_groups("lou", "h")
    await store.remove_groups("lou", "g")
    assert await client.get(key) == future  # untouched
    [listed] = await store.list("lou")
    assert listed.access_groups == ["h"]
    # Signing out ends it all the same.
    assert await store.delete_all("lou") == 2
    assert await client.get(key) is None
