"""The scenarios: what is set up before timing starts, and one operation."""

from __future__ import annotations

import asyncio
import itertools
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from bench.impls import UA, Created, Impl


class Exhausted(Exception):
    """The scenario used up what its setup prepared (e.g. sessions to delete)."""


@dataclass
class Scenario:
    name: str
    needs: frozenset[str]
    prepare: Callable[[Impl, random.Random, float], Awaitable[Any]]
    step: Callable[[Impl, Any, random.Random], Awaitable[Any]]
    #: Heavy operations (k = 100, 1000 sessions each) run with fewer tasks, so
    #: that the slowest implementation still completes operations in a run.
    max_concurrency: int | None = None


def _users(n: int, tag: str) -> list[str]:
    return [f"user-{tag}-{i}" for i in range(n)]


# -- single operations ----------------------------------------------------------


async def _prep_users(impl: Impl, rng: random.Random, scale: float) -> Any:
    users = _users(max(100, int(10_000 * scale)), "c")
    # Steady state: a session for a fifth of the users first, so that the
    # timed creates do not pay for making each bucket's event stream.
    await impl.populate(users[: len(users) // 5], 1, groups=("member",))
    return {"users": users}


async def _create(impl: Impl, st: Any, rng: random.Random) -> Any:
    return await impl.store.create(rng.choice(st["users"]), ["member"], user_agent=UA)


async def _prep_one_each(impl: Impl, rng: random.Random, scale: float) -> Any:
    return await impl.populate(_users(max(100, int(10_000 * scale)), "r"), 1, groups=("member",))


async def _get(impl: Impl, st: list[Created], rng: random.Random) -> Any:
    c = rng.choice(st)
    if await impl.store.get(c.user_id, c.token) is None:
        raise AssertionError("session not found")


async def _resolve(impl: Impl, st: list[Created], rng: random.Random) -> Any:
    if await impl.store.resolve(rng.choice(st).token) is None:
        raise AssertionError("session not found")


async def _prep_deletable(impl: Impl, rng: random.Random, scale: float) -> Any:
    made = await impl.populate(_users(max(200, int(15_000 * scale)), "d"), 1)
    rng.shuffle(made)
    return made


async def _delete(impl: Impl, st: list[Created], rng: random.Random) -> Any:
    if not st:
        raise Exhausted
    c = st.pop()
    if not await impl.store.delete(c.user_id, c.token):
        raise AssertionError("nothing deleted")


def _prep_k(k: int, expired: int = 0) -> Callable[[Impl, random.Random, float], Awaitable[Any]]:
    async def prepare(impl: Impl, rng: random.Random, scale: float) -> Any:
        if expired:
            users = _users(max(4, int(12 * scale)), f"k{k}e{expired}")
            await impl.populate(users, expired, short=True)
        else:
            users = _users(max(2, int(10_000 * scale) // k), f"k{k}")
        await impl.populate(users, k, groups=("member",))
        if expired:
            await asyncio.sleep(0.7)  # let the short-lived sessions (0.5 s) expire
        return {"users": users, "counter": itertools.count()}

    return prepare


async def _list(impl: Impl, st: Any, rng: random.Random) -> Any:
    return await impl.store.list(rng.choice(st["users"]))


async def _toggle(impl: Impl, st: Any, rng: random.Random) -> Any:
    """Add one group to a user's sessions, and remove it on the user's next
    turn: every call changes every session, and sessions keep their size, so
    the figure is a steady state (group changes: half adds, half removes)."""
    i = next(st["counter"])
    users = st["users"]
    user = users[i % len(users)]
    if (i // len(users)) % 2 == 0:
        return await impl.store.add_groups(user, "toggled")
    return await impl.store.remove_groups(user, "toggled")


def _prep_delete_all(k: int) -> Callable[[Impl, random.Random, float], Awaitable[Any]]:
    async def prepare(impl: Impl, rng: random.Random, scale: float) -> Any:
        # Each call uses up a user. With 24 the run lasted 0.05 s, and one
        # stall of the host in it moved the figure by a third.
        users = _users(max(3, int(96 * scale)), f"da{k}")
        await impl.populate(users, k)
        return users

    return prepare


async def _delete_all(impl: Impl, st: list[str], rng: random.Random) -> Any:
    if not st:
        raise Exhausted
    return await impl.store.delete_all(st.pop())


# -- the web mix --------------------------------------------------------------------

MIX = [
    ("resolve", 90),
    ("create", 4),
    ("delete", 2),
    ("add_groups", 1),
    ("remove_groups", 1),
    ("list", 1),
    ("delete_all", 1),
]
_MIX_OPS = [op for op, _ in MIX]
_MIX_WEIGHTS = [w for _, w in MIX]


async def _prep_mix(impl: Impl, rng: random.Random, scale: float) -> Any:
    users = _users(max(500, int(10_000 * scale)), "mix")
    made = await impl.populate(users, 1, groups=("member",))
    by_user: dict[str, list[str]] = {u: [] for u in users}
    for c in made:
        by_user[c.user_id].append(c.token)
    return {"users": users, "by_user": by_user, "tokens": [c.token for c in made]}


async def _mix(impl: Impl, st: Any, rng: random.Random) -> Any:
    op = rng.choices(_MIX_OPS, _MIX_WEIGHTS)[0]
    users: list[str] = st["users"]
    by_user: dict[str, list[str]] = st["by_user"]
    tokens: list[str] = st["tokens"]
    user = rng.choice(users)
    store = impl.store
    if op == "resolve":
        # A token that may have been deleted since: web traffic sees both.
        return await store.resolve(rng.choice(tokens))
    if op == "create":
        s = await store.create(user, ["member"], user_agent=UA)
        by_user[user].append(s.token)
        tokens.append(s.token)
        return s
    if op == "delete":
        if by_user[user]:
            return await store.delete(user, by_user[user].pop())
        return False
    if op == "add_groups":
        return await store.add_groups(user, "beta")
    if op == "remove_groups":
        return await store.remove_groups(user, "beta")
    if op == "list":
        return await store.list(user)
    by_user[user] = []
    return await store.delete_all(user)


_GROUP_OPS = frozenset({"add_groups", "remove_groups"})

SCENARIOS: list[Scenario] = [
    Scenario("create", frozenset({"create"}), _prep_users, _create),
    Scenario("get", frozenset({"get"}), _prep_one_each, _get),
    Scenario("resolve", frozenset({"resolve"}), _prep_one_each, _resolve),
    Scenario("list[k=10]", frozenset({"list"}), _prep_k(10), _list),
    Scenario("delete", frozenset({"delete"}), _prep_deletable, _delete),
    Scenario(
        "delete_all[k=1000]", frozenset({"delete_all"}), _prep_delete_all(1000), _delete_all, 4
    ),
    *[
        Scenario(f"add_groups[k={k}]", _GROUP_OPS, _prep_k(k), _toggle, limit)
        for k, limit in ((1, None), (10, None), (100, 10), (1000, 4))
    ],
    Scenario("list[k=10,expired=1000]", frozenset({"list"}), _prep_k(10, 1000), _list, 10),
    Scenario("add_groups[k=10,expired=1000]", _GROUP_OPS, _prep_k(10, 1000), _toggle, 10),
    Scenario("web_mix", frozenset(_MIX_OPS), _prep_mix, _mix),
]
