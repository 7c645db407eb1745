"""The implementations the harness compares, behind one small interface."""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis
from starsessions.stores.redis import RedisStore

from bench.naive import NaiveStore
from sessionkit import SessionStore
from sessionkit.defaults import MAX_SESSIONS_PER_USER_LIMIT

UA = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 "
    "(KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36 Edg/124.0.2478.51"
)  # a typical browser user agent, 129 characters

ALL_OPS = frozenset(
    {"create", "get", "resolve", "list", "delete", "delete_all", "add_groups", "remove_groups"}
)
PEER_OPS = frozenset({"create", "get", "resolve", "delete"})


@dataclass
class Created:
    """What scenarios keep of a created session."""

    user_id: str
    token: str


class PeerStore:
    """`starsessions`' Redis store (a real peer from PyPI) behind the same calls,
    for what it supports: write ≈ create, read ≈ resolve/get, remove ≈ delete."""

    def __init__(self, client: aioredis.Redis, *, prefix: str, lifetime: int = 14 * 86400):
        self.client = client
        self.prefix = f"peer:{prefix}:"
        self.store = RedisStore(connection=client, prefix=self.prefix)
        self.lifetime = lifetime
        self.lifetime_ms = lifetime * 1000

    @staticmethod
    def _doc(user_id: str, access_groups: Iterable[str], user_agent: str | None) -> bytes:
        return json.dumps(
            {
                "userId": user_id,
                "accessGroupKeys": list(access_groups),
                "userAgent": user_agent,
                "creationDtm": time.time(),
            }
        ).encode()

    async def bulk_create(
        self, sessions: list[str], user_agent: str, lifetime_ms: int, groups: Iterable[str] = ()
    ) -> list[str]:
        """Setup helper: the same values `create` writes, in pipelines."""
        tokens = [secrets.token_urlsafe(32) for _ in sessions]
        for start in range(0, len(sessions), 2000):
            async with self.client.pipeline(transaction=False) as pipe:
                for user_id, t in zip(
                    sessions[start : start + 2000], tokens[start : start + 2000], strict=True
                ):
                    pipe.set(
                        self.prefix + t, self._doc(user_id, groups, user_agent), px=lifetime_ms
                    )
                await pipe.execute()
        return tokens

    async def create(
        self, user_id: str, access_groups: Iterable[str] = (), *, user_agent: str | None = None
    ) -> Created:
        session_id = secrets.token_urlsafe(32)
        await self.store.write(
            session_id,
            self._doc(user_id, access_groups, user_agent),
            lifetime=self.lifetime,
            ttl=self.lifetime,
        )
        return Created(user_id, session_id)

    async def resolve(self, token: str) -> dict[str, Any] | None:
        raw = await self.store.read(token, lifetime=self.lifetime)
        return json.loads(raw) if raw else None

    async def get(self, user_id: str, token: str) -> dict[str, Any] | None:
        doc = await self.resolve(token)
        return doc if doc is not None and doc.get("userId") == user_id else None

    async def delete(self, user_id: str, token: str) -> bool:
        await self.store.remove(token)
        return True


@dataclass
class Impl:
    """One implementation under test, on its own key prefix."""

    name: str
    store: Any
    ops: frozenset[str]
    client: Any
    short_store: Any = None  # same implementation, 0.5 s lifetime (expired-index scenarios)
    notes: list[str] = field(default_factory=list)

    async def populate(
        self, users: list[str], per_user: int, *, short: bool = False, groups: tuple[str, ...] = ()
    ) -> list[Created]:
        """Create `per_user` sessions for each user, fast (setup, not measured)."""
        store = self.short_store if short else self.store
        owners = [u for u in users for _ in range(per_user)]
        if isinstance(store, (NaiveStore, PeerStore)):
            tokens = await store.bulk_create(owners, UA, store.lifetime_ms, groups)
            return [Created(u, t) for u, t in zip(owners, tokens, strict=True)]
        sem = asyncio.Semaphore(256)  # concurrent creates: the store pipelines them

        async def one(user: str) -> Created:
            async with sem:
                s = await store.create(user, groups, user_agent=UA)
                return Created(user, s.token)

        return list(await asyncio.gather(*(one(u) for u in owners)))


def make_impls(
    client: Any, prefix: str, names: list[str], cluster: bool, *, events: bool = True
) -> list[Impl]:
    """The implementations asked for, each on its own key prefix. naive and
    peer are left out on a cluster: their multi-key writes use untagged keys.
    `events` turns sessionkit's event streams on or off (naive and peer have
    none)."""
    out: list[Impl] = []
    for name in names:
        if name == "sessionkit":
            kind: Any = SessionStore
        elif name == "naive":
            kind = NaiveStore
        elif name == "peer":
            kind = PeerStore
        else:
            raise SystemExit(f"unknown implementation {name!r}: use sessionkit, naive or peer")
        if cluster and kind is not SessionStore:
            continue
        own = f"{prefix}{name[:2]}"
        if kind is PeerStore:
            out.append(Impl(name, PeerStore(client, prefix=own), PEER_OPS, client))
            continue
        # Room for the scenarios with 1,000 sessions per user (and the
        # expired ones beside them): the cap's maximum costs a create nothing.
        opts: dict[str, Any] = (
            {"events": events, "max_sessions_per_user": MAX_SESSIONS_PER_USER_LIMIT}
            if kind is SessionStore
            else {}
        )
        short = kind(client, prefix=own, lifetime=0.5, **opts)
        store = kind(client, prefix=own, **opts)
        out.append(Impl(name, store, ALL_OPS, client, short_store=short))
    return out
