"""Expiry is Redis's job: expired sessions are never returned or counted, the
index prunes itself, and nothing is left behind."""

from __future__ import annotations

import asyncio
from datetime import timedelta

from sessionkit import SessionStore
from sessionkit import _keys as keys
from tests.conftest import Backend, StoreFactory


async def test_expired_sessions_vanish_with_their_index(
    make_store: StoreFactory, backend: Backend, prefix: str
) -> None:
    short = make_store(lifetime=0.4)
    long = make_store(lifetime=60)
    doomed = [await short.create("alice", ["g"]) for _ in range(3)]
    assert (
        len(await backend.keys(prefix)) == 6
    )  # three sessions, the index, the order and the groups
    await asyncio.sleep(0.6)
    for s in doomed:
        assert await short.resolve(s.token or "") is None
        assert await short.get("alice", s.token or "") is None
        assert await short.delete("alice", s.token or "") is False
    assert await short.list("alice") == []
    assert await short.add_groups("alice", "x") == 0
    assert await short.delete_all("alice") == 0
    assert await backend.keys(prefix) == []
    # A live session beside expired ones: only it is listed and counted.
    await short.create("bob")
    keep = await long.create("bob")
    await asyncio.sleep(0.6)
    assert [s.id for s in await long.list("bob")] == [keep.id]
    assert await long.add_groups("bob", "x") == 1


async def test_index_lives_exactly_as_long_as_its_longest_session(
    make_store: StoreFactory, backend: Backend, prefix: str
) -> None:
    await make_store(lifetime=100).create("alice")
    await make_store(lifetime=1000).create("alice")
    await make_store(lifetime=10).create("alice")
    digest, bucket = keys.user_digest("alice")
    ttl = await backend.client.pttl(keys.index_key(prefix, bucket, digest))
    assert 990_000 < ttl <= 1_000_000


async def test_the_user_s_keys_follow_the_longest_session_left_after_an_eviction(
    make_store: StoreFactory, backend: Backend, prefix: str
) -> None:
    digest, bucket = keys.user_digest("alice")
    user_keys = [
        f(prefix, bucket, digest) for f in (keys.index_key, keys.order_key, keys.groups_key)
    ]
    await make_store(lifetime=1000, max_sessions_per_user=2).create("alice")
    await make_store(lifetime=10, max_sessions_per_user=2).create("alice")
    for key in user_keys:  # a shorter session leaves them as they were
        assert 990_000 < await backend.client.pttl(key) <= 1_000_000
    # At the cap the long-lived (oldest) session is evicted: they now live as
    # long as the sessions left, not as the one that went.
    await make_store(lifetime=20, max_sessions_per_user=2).create("alice")
    for key in user_keys:
        assert 19_000 < await backend.client.pttl(key) <= 20_000


async def test_idle_timeout_slides_on_use(
    make_store: StoreFactory, backend: Backend, prefix: str
) -> None:
    # Each gap has 0.7 s to spare: a loaded machine's late wake-up must not
    # read as an idle expiry.
    store = make_store(lifetime=30, idle_timeout=1.0)
    s = await store.create("alice")
    assert s.expires_at - s.created_at <= timedelta(seconds=1.01)
    for _ in range(5):  # 1.5 s of use, each gap shorter than the idle timeout
        await asyncio.sleep(0.3)
        got = await store.resolve(s.token or "")
        assert got is not None
        assert got.last_active_at > s.last_active_at
        assert got.expires_at - got.last_active_at == timedelta(seconds=1.0)
    assert len(await store.list("alice")) == 1
    await asyncio.sleep(1.3)
    assert await store.get("alice", s.token or "") is None
    assert await store.list("alice") == []
    assert await backend.keys(prefix) == []


async def test_idle_timeout_never_extends_past_the_lifetime(
    make_store: StoreFactory, backend: Backend, prefix: str
) -> None:
    # Each step has 1 s to spare: a loaded machine's late wake-up must not
    # read as an idle expiry (0.4 s was not enough for a CI run with four
    # workers on two cores).
    store = make_store(lifetime=3.0, idle_timeout=2.0)
    s = await store.create("alice")
    limit = s.created_at + timedelta(seconds=3.0)
    await asyncio.sleep(1.0)
    got = await store.get("alice", s.token or "")
    assert got is not None and got.expires_at <= limit + timedelta(milliseconds=1)
    await asyncio.sleep(1.0)  # the slide would end at 4 s: held to 3 s
    got = await store.get("alice", s.token or "")
    assert got is not None and got.expires_at <= limit + timedelta(milliseconds=1)
    await asyncio.sleep(1.5)  # 3.5 s: past the lifetime though used 1.5 s ago
    assert await store.get("alice", s.token or "") is None
    assert await backend.keys(prefix) == []


async def test_last_active_is_touched_at_most_once_per_interval(make_store: StoreFactory) -> None:
    # The first read has 1 s to come: a loaded machine's late wake-up must
    # not read as a touch that was due.
    store = make_store(touch_interval=1.0)
    s = await store.create("alice")
    first = await store.resolve(s.token or "")
    assert first is not None and first.last_active_at == s.last_active_at
    await asyncio.sleep(1.1)
    later = await store.resolve(s.token or "")
    assert later is not None and later.last_active_at > s.last_active_at
    listed = await store.list("alice")
    assert listed[0].last_active_at == later.last_active_at


async def test_a_session_deleted_behind_its_back_leaves_the_index_on_the_next_list(
    make_store: StoreFactory, backend: Backend, prefix: str
) -> None:
    store = make_store(lifetime=60)
    gone, kept = await store.create("alice", ["g"]), await store.create("alice", ["g"])
    digest, bucket = keys.user_digest("alice")
    await backend.client.delete(keys.session_key(prefix, bucket, gone.id))
    assert [s.id for s in await store.list("alice")] == [kept.id]
    for key in (keys.index_key(prefix, bucket, digest), keys.order_key(prefix, bucket, digest)):
        assert await backend.client.zrange(key, 0, -1) == [kept.id.encode()]
    assert await backend.client.hkeys(keys.groups_key(prefix, bucket, digest)) == [kept.id.encode()]
    assert await store.add_groups("alice", "h") == 1


async def test_sign_out_everywhere_ends_every_session_when_a_user_key_was_lost(
    store: SessionStore, backend: Backend, prefix: str
) -> None:
    """The user's index and groups hash name the same sessions; if one of
    them is lost behind sessionkit's back (removed by hand, evicted under
    maxmemory), `delete_all` still ends every session the other names."""
    digest, bucket = keys.user_digest("alice")
    for lost in (keys.groups_key(prefix, bucket, digest), keys.index_key(prefix, bucket, digest)):
        made = [await store.create("alice", ["g"]) for _ in range(3)]
        await backend.client.delete(lost)
        assert await store.delete_all("alice") == 3
        for s in made:
            assert await store.resolve(s.token or "") is None
        assert await backend.keys(prefix) == []
