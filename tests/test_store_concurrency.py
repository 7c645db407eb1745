"""Concurrency: many tasks on one user at once. The end state equals what a
serial order predicts, and no reader ever sees half of a group change."""

from __future__ import annotations

import asyncio
import itertools
import random

import anyio

from sessionkit import SessionStore


async def test_concurrent_creates_deletes_and_group_changes_lose_nothing(
    store: SessionStore,
) -> None:
    uid = "busy-user"
    initial = [await store.create(uid, ["base"]) for _ in range(40)]
    doomed, kept = initial[:15], initial[15:]
    created_ids: list[str] = []
    added = [f"add{i}" for i in range(12)]
    flickers = [f"tmp{i}" for i in range(8)]
    rng = random.Random(7)

    async def create() -> None:
        await asyncio.sleep(rng.random() / 100)
        created_ids.append((await store.create(uid, ["new"])).id)

    async def delete(token: str) -> None:
        await asyncio.sleep(rng.random() / 100)
        assert await store.delete(uid, token) is True

    async def add(group: str) -> None:
        await asyncio.sleep(rng.random() / 100)
        await store.add_groups(uid, group)

    async def flicker(group: str) -> None:
        await asyncio.sleep(rng.random() / 100)
        await store.add_groups(uid, [group, "base"])
        await store.remove_groups(uid, group)

    async with anyio.create_task_group() as tg:
        for _ in range(30):
            tg.start_soon(create)
        for s in doomed:
            tg.start_soon(delete, s.token or "")
        for g in added:
            tg.start_soon(add, g)
        for g in flickers:
            tg.start_soon(flicker, g)

    final = await store.list(uid)
    by_id = {s.id: s for s in final}
    assert set(by_id) == {s.id for s in kept} | set(created_ids)
    assert len(final) == len(kept) + 30
    for s in kept:  # alive through every change: has every added group, no flicker left
        assert set(by_id[s.id].access_groups) == {"base", *added}
    # A session created during the run has exactly the adds that came after it;
    # in any serial order those sets form a chain under inclusion.
    sets = sorted(
        (frozenset(set(by_id[i].access_groups) & set(added)) for i in created_ids), key=len
    )
    for smaller, larger in itertools.pairwise(sets):
        assert smaller <= larger
    for i in created_ids:
        assert not set(by_id[i].access_groups) & set(flickers)


async def test_readers_never_see_half_a_group_change(store: SessionStore) -> None:
    uid = "watched-user"
    for _ in range(60):
        await store.create(uid)
    seen: list[tuple[int, int]] = []
    done = anyio.Event()

    async def writer() -> None:
        for _ in range(40):
            assert await store.add_groups(uid, "admin") == 60
            assert await store.remove_groups(uid, "admin") == 60
        done.set()

    async def reader() -> None:
        while not done.is_set():
            sessions = await store.list(uid)
            with_group = sum("admin" in s.access_groups for s in sessions)
            seen.append((len(sessions), with_group))

    async with anyio.create_task_group() as tg:
        tg.start_soon(writer)
        for _ in range(4):
            tg.start_soon(reader)

    assert len(seen) > 20
    assert all(total == 60 and with_group in (0, 60) for total, with_group in seen)
    assert {w for _, w in seen} == {0, 60}  # both states were observed


async def test_concurrent_max_sessions_never_exceeds_the_limit(
    store: SessionStore,
) -> None:
    limited = SessionStore(store.client, prefix=store.prefix, max_sessions_per_user=5)
    made = await asyncio.gather(*(limited.create("capped") for _ in range(50)))
    alive = await limited.list("capped")
    assert len(alive) == 5
    newest = sorted(made, key=lambda s: s.created_at)[-5:]
    assert {s.id for s in alive} == {s.id for s in newest}
