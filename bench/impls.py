"""The implementations the harness compares, behind one small interface."""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import redis.asyncio as aioredis
from aiohttp_session import Session as AiohttpSession
from aiohttp_session.redis_storage import RedisStorage as AiohttpRedisStorage
from litestar.stores.redis import RedisStore as LitestarRedisStore
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
IMPLEMENTATIONS = ("sessionkit", "naive", "starsessions", "litestar", "aiohttp-session")


@dataclass
class Created:
    """What scenarios keep of a created session."""

    user_id: str
    token: str


class Peer:
    """A real peer from PyPI behind the same calls, for what it supports:
    write ≈ create, read ≈ resolve/get, remove ≈ delete. Each one is driven
    through its own storage API, on the same client, server and run."""

    name = ""
    lifetime = 14 * 86400
    lifetime_ms = lifetime * 1000

    @staticmethod
    def _doc(user_id: str, access_groups: Iterable[str], user_agent: str | None) -> dict[str, Any]:
        return {
            "userId": user_id,
            "accessGroupKeys": list(access_groups),
            "userAgent": user_agent,
            "creationDtm": time.time(),
        }

    async def create(
        self, user_id: str, access_groups: Iterable[str] = (), *, user_agent: str | None = None
    ) -> Created:
        raise NotImplementedError

    async def resolve(self, token: str) -> dict[str, Any] | None:
        raise NotImplementedError

    async def delete(self, user_id: str, token: str) -> bool:
        raise NotImplementedError

    async def get(self, user_id: str, token: str) -> dict[str, Any] | None:
        doc = await self.resolve(token)
        return doc if doc is not None and doc.get("userId") == user_id else None


class StarsessionsPeer(Peer):
    """`starsessions`' `RedisStore` (write / read / remove)."""

    name = "starsessions"

    def __init__(self, client: aioredis.Redis, *, prefix: str):
        self.client = client
        self.prefix = f"peer:{prefix}:"
        self.store = RedisStore(connection=client, prefix=self.prefix)

    async def create(
        self, user_id: str, access_groups: Iterable[str] = (), *, user_agent: str | None = None
    ) -> Created:
        session_id = secrets.token_urlsafe(32)
        doc = json.dumps(self._doc(user_id, access_groups, user_agent)).encode()
        await self.store.write(session_id, doc, lifetime=self.lifetime, ttl=self.lifetime)
        return Created(user_id, session_id)

    async def resolve(self, token: str) -> dict[str, Any] | None:
        raw = await self.store.read(token, lifetime=self.lifetime)
        return json.loads(raw) if raw else None

    async def delete(self, user_id: str, token: str) -> bool:
        await self.store.remove(token)
        return True


class LitestarPeer(Peer):
    """Litestar's server-side sessions store, `litestar.stores.redis.RedisStore`
    (set / get / delete, as `ServerSideSessionBackend` calls them)."""

    name = "litestar"

    def __init__(self, client: aioredis.Redis, *, prefix: str):
        self.store = LitestarRedisStore(client, namespace=f"peer-ls-{prefix}")

    async def create(
        self, user_id: str, access_groups: Iterable[str] = (), *, user_agent: str | None = None
    ) -> Created:
        session_id = secrets.token_hex(16)  # what litestar's backend makes
        doc = json.dumps(self._doc(user_id, access_groups, user_agent)).encode()
        await self.store.set(session_id, doc, expires_in=self.lifetime)
        return Created(user_id, session_id)

    async def resolve(self, token: str) -> dict[str, Any] | None:
        raw = await self.store.get(token)
        return json.loads(raw) if raw else None

    async def delete(self, user_id: str, token: str) -> bool:
        await self.store.delete(token)
        return True


class AiohttpSessionPeer(Peer):
    """`aiohttp-session`'s `RedisStorage`, through its request/response API
    (`save_session` / `load_session`; delete is its invalidate-and-save)."""

    name = "aiohttp-session"

    def __init__(self, client: aioredis.Redis, *, prefix: str):
        self.cookie = f"AIOHTTP_SESSION_{prefix}"
        self.storage = AiohttpRedisStorage(client, cookie_name=self.cookie, max_age=self.lifetime)

    def _request(self, token: str | None) -> Any:
        # What the storage reads of a request: its cookies. (aiohttp's own
        # mocked request costs about a millisecond of CPU, which would be
        # the harness's time, not the peer's.)
        return SimpleNamespace(cookies={self.cookie: token} if token else {})

    async def create(
        self, user_id: str, access_groups: Iterable[str] = (), *, user_agent: str | None = None
    ) -> Created:
        session = AiohttpSession(None, data=None, new=True, max_age=self.lifetime)
        session.update(self._doc(user_id, access_groups, user_agent))
        response = _Response()
        await self.storage.save_session(self._request(None), response, session)  # type: ignore[arg-type]
        return Created(user_id, response.cookies[self.cookie])

    async def resolve(self, token: str) -> dict[str, Any] | None:
        session = await self.storage.load_session(self._request(token))
        return None if session.new or session.empty else dict(session)

    async def delete(self, user_id: str, token: str) -> bool:
        request = self._request(token)
        session = await self.storage.load_session(request)
        if session.new:
            return False
        session.invalidate()
        await self.storage.save_session(request, _Response(), session)  # type: ignore[arg-type]
        return True


class _Response:
    """What `aiohttp-session` writes to a response: its cookies."""

    def __init__(self) -> None:
        self.cookies: dict[str, str] = {}

    def set_cookie(self, name: str, value: str, **params: Any) -> None:
        self.cookies[name] = value

    def del_cookie(self, name: str, **params: Any) -> None:
        self.cookies.pop(name, None)


PEERS: dict[str, type[Peer]] = {
    p.name: p for p in (StarsessionsPeer, LitestarPeer, AiohttpSessionPeer)
}


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
        if isinstance(store, NaiveStore):
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
    """The implementations asked for, each on its own key prefix. Only
    sessionkit runs on a cluster: naive's multi-key writes use untagged keys,
    and the peers take a single-server client. `events` turns sessionkit's
    event streams on or off (the others have none)."""
    out: list[Impl] = []
    for name in names:
        if name == "sessionkit":
            kind: Any = SessionStore
        elif name == "naive":
            kind = NaiveStore
        elif name in PEERS:
            kind = PEERS[name]
        else:
            raise SystemExit(f"unknown implementation {name!r}: use {', '.join(IMPLEMENTATIONS)}")
        if cluster and kind is not SessionStore:
            continue
        own = f"{prefix}{name[:2]}"
        if name in PEERS:
            out.append(Impl(name, kind(client, prefix=own), PEER_OPS, client))
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
