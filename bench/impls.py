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

UA = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 "
    "(KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36"
)  # a typical 130-character browser user agent

ALL_OPS = frozenset(
    {"create", "get", "resolve", "list", "delete", "delete_all", "add_groups", "remove_groups"}
)


@dataclass
class Created:
    """What scenarios keep of a created session."""

    user_id: str
    token: str


class PeerStore:
    """`starsessions`' Redis store (a real peer from PyPI) behind the same calls,
    for what it supports: write ≈ create, read ≈ resolve/get, remove ≈ delete."""

    def __init__(self, client: aioredis.Redis, *, prefix: str, lifetime: int = 14 * 86400):
        self.store = RedisStore(connection=client, prefix=f"peer:{prefix}:")
        self.lifetime = lifetime

    async def create(
        self, user_id: str, access_groups: Iterable[str] = (), *, user_agent: str | None = None
    ) -> Created:
        session_id = secrets.token_urlsafe(32)
        doc = {
            "userId": user_id,
            "accessGroupKeys": list(access_groups),
            "userAgent": user_agent,
            "creationDtm": time.time(),
        }
        await self.store.write(
            session_id, json.dumps(doc).encode(), lifetime=self.lifetime, ttl=self.lifetime
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
    short_store: Any = None  # same implementation, 1 s lifetime (expired-index scenarios)
    notes: list[str] = field(default_factory=list)

    async def populate(
        self, users: list[str], per_user: int, *, short: bool = False, groups: tuple[str, ...] = ()
    ) -> list[Created]:
        """Create `per_user` sessions for each user, fast (setup, not measured)."""
        store = self.short_store if short else self.store
        out: list[Created] = []
        sem = asyncio.Semaphore(48)

        async def one(user: str) -> None:
            async with sem:
                s = await store.create(user, groups, user_agent=UA)
                out.append(Created(user, s.token))

        for start in range(0, len(users) * per_user, 4096):
            batch = [users[i // per_user] for i in range(start, min(start + 4096, len(users) * per_user))]
            await asyncio.gather(*(one(u) for u in batch))
        return out


def make_impls(client: Any, prefix: str, names: list[str], cluster: bool) -> list[Impl]:
    out: list[Impl] = []
    for name in names:
        if name == "sessionkit":
            out.append(
                Impl(
                    name,
                    SessionStore(client, prefix=f"{prefix}sk"),
                    ALL_OPS,
                    client,
                    short_store=SessionStore(client, prefix=f"{prefix}sk", lifetime=1),
                )
            )
        elif name == "naive":
            if cluster:
                continue  # multi-key MULTI on untagged keys cannot run on a cluster
            out.append(
                Impl(
                    name,
                    NaiveStore(client, prefix=f"{prefix}nv"),
                    ALL_OPS,
                    client,
                    short_store=NaiveStore(client, prefix=f"{prefix}nv", lifetime=1),
                )
            )
        elif name == "peer":
            if cluster:
                continue
            out.append(
                Impl(name, PeerStore(client, prefix=f"{prefix}pr"), frozenset({"create", "get", "resolve", "delete"}), client)
            )
        else:
            raise SystemExit(f"unknown implementation {name!r}: use sessionkit, naive or peer")
    return out
