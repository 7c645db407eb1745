"""The yardstick: sessions kept the way typical Redis session libraries keep
them, with the same API as `SessionStore`.

* a session is a hash ``naive:<prefix>:sess:<token>`` (token in the clear,
  as most libraries key it) with an expiry;
* a user's sessions are a plain set ``naive:<prefix>:user:<user id>``;
* writes that touch several keys go in one ``MULTI`` pipeline;
* listing is ``SMEMBERS`` then one pipeline of ``HGETALL``; members whose hash
  has expired are removed from the set on the way (lazy cleanup);
* group changes load each session, change its groups in Python and save it
  back, one session after another, as libraries that model a session as an
  object (load, mutate, save) do.

It is honest about what it promises: group changes are not atomic across a
user's sessions and keys are not cluster-safe. It exists to be measured
against; it is not part of the library.
"""

from __future__ import annotations

import builtins
import hashlib
import json
import secrets
import time
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

import redis.asyncio as aioredis

from sessionkit import Session
from sessionkit import _validate as validate
from sessionkit.useragent import parse_user_agent

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _ms_time(ms: int) -> datetime:
    return _EPOCH + timedelta(milliseconds=ms)


def _us_time(us: int) -> datetime:
    return _EPOCH + timedelta(microseconds=us)


class NaiveStore:
    """Typical Redis session storage, for comparison (see the module docstring)."""

    def __init__(
        self, client: aioredis.Redis, *, prefix: str = "sk", lifetime: float = 14 * 86400
    ) -> None:
        self.client: Any = client
        self.prefix = prefix
        self.lifetime_ms = int(lifetime * 1000)

    def _skey(self, token: str) -> str:
        return f"naive:{self.prefix}:sess:{token}"

    def _ukey(self, user_id: str) -> str:
        return f"naive:{self.prefix}:user:{user_id}"

    def _session(self, token: str, h: dict[bytes, bytes], with_token: bool) -> Session:
        created = _us_time(int(h[b"created"]))
        ua = h.get(b"ua", b"").decode()
        return Session(
            id=hashlib.sha256(token.encode()).hexdigest()[:22],
            user_id=h[b"uid"].decode(),
            token=token if with_token else None,
            created_at=created,
            expires_at=_ms_time(int(h[b"expires"])),
            last_active_at=created,
            access_groups=sorted(json.loads(h[b"groups"])),
            user_agent=parse_user_agent(ua) if ua else None,
            data=json.loads(h[b"data"]),
        )

    def _fields(
        self, user_id: str, groups: Iterable[str], user_agent: str | None, data: Any
    ) -> dict[str, Any]:
        now_us = time.time_ns() // 1000
        return {
            "uid": user_id,
            "created": now_us,
            "expires": now_us // 1000 + self.lifetime_ms,
            "groups": json.dumps(sorted(set(groups))),
            "ua": user_agent or "",
            "data": json.dumps(data or {}),
        }

    async def create(
        self,
        user_id: str,
        access_groups: str | Iterable[str] = (),
        *,
        user_agent: str | None = None,
        data: dict[str, Any] | None = None,
    ) -> Session:
        uid = validate.user_id(user_id)
        groups = validate.groups(access_groups)
        token = secrets.token_urlsafe(32)
        fields = self._fields(uid, groups, user_agent, data)
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.hset(self._skey(token), mapping=fields)
            pipe.pexpire(self._skey(token), self.lifetime_ms)
            pipe.sadd(self._ukey(uid), token)
            pipe.pexpire(self._ukey(uid), self.lifetime_ms)
            await pipe.execute()
        enc = {k.encode(): str(v).encode() for k, v in fields.items()}
        return self._session(token, enc, True)

    async def resolve(self, token: str) -> Session | None:
        h = await self.client.hgetall(self._skey(token))
        return self._session(token, h, True) if h else None

    async def get(self, user_id: str, token: str) -> Session | None:
        s = await self.resolve(token)
        return s if s is not None and s.user_id == user_id else None

    async def _live(self, user_id: str) -> builtins.list[tuple[str, dict[bytes, bytes]]]:
        members = [m.decode() for m in await self.client.smembers(self._ukey(user_id))]
        if not members:
            return []
        async with self.client.pipeline(transaction=False) as pipe:
            for m in members:
                pipe.hgetall(self._skey(m))
            hashes = await pipe.execute()
        stale = [m for m, h in zip(members, hashes, strict=True) if not h]
        if stale:
            await self.client.srem(self._ukey(user_id), *stale)
        return [(m, h) for m, h in zip(members, hashes, strict=True) if h]

    async def list(self, user_id: str) -> builtins.list[Session]:
        sessions = [self._session(t, h, False) for t, h in await self._live(user_id)]
        return sorted(sessions, key=lambda s: s.created_at)

    async def delete(self, user_id: str, token: str) -> bool:
        if await self.get(user_id, token) is None:
            return False
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.delete(self._skey(token))
            pipe.srem(self._ukey(user_id), token)
            deleted, _ = await pipe.execute()
        return bool(deleted)

    async def delete_all(self, user_id: str, *, except_token: str | None = None) -> int:
        members = [m.decode() for m in await self.client.smembers(self._ukey(user_id))]
        doomed = [m for m in members if m != except_token]
        if not doomed:
            return 0
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.delete(*[self._skey(m) for m in doomed])
            pipe.srem(self._ukey(user_id), *doomed)
            deleted, _ = await pipe.execute()
        return int(deleted)

    async def _change_groups(self, user_id: str, groups: str | Iterable[str], add: bool) -> int:
        wanted = set(validate.groups(groups))
        members = [m.decode() for m in await self.client.smembers(self._ukey(user_id))]
        changed = 0
        for token in members:  # load, mutate, save: one session at a time
            raw = await self.client.hget(self._skey(token), "groups")
            if raw is None:
                continue
            have = set(json.loads(raw))
            new = have | wanted if add else have - wanted
            if new != have:
                await self.client.hset(self._skey(token), "groups", json.dumps(sorted(new)))
                changed += 1
        return changed

    async def add_groups(self, user_id: str, groups: str | Iterable[str]) -> int:
        return await self._change_groups(user_id, groups, True)

    async def remove_groups(self, user_id: str, groups: str | Iterable[str]) -> int:
        return await self._change_groups(user_id, groups, False)

    async def bulk_create(
        self,
        sessions: builtins.list[str],
        user_agent: str,
        lifetime_ms: int,
        groups: Iterable[str] = (),
    ) -> builtins.list[str]:
        """Setup helper: one session per entry of `sessions` (a user id each),
        written in pipelines of 2,000; returns their tokens in order."""
        tokens = [secrets.token_urlsafe(32) for _ in sessions]
        for start in range(0, len(sessions), 2000):
            async with self.client.pipeline(transaction=False) as pipe:
                for user_id, t in zip(
                    sessions[start : start + 2000], tokens[start : start + 2000], strict=True
                ):
                    fields = self._fields(user_id, groups, user_agent, None)
                    fields["expires"] = int(time.time() * 1000) + lifetime_ms
                    pipe.hset(self._skey(t), mapping=fields)
                    pipe.pexpire(self._skey(t), lifetime_ms)
                    pipe.sadd(self._ukey(user_id), t)
                    pipe.pexpire(self._ukey(user_id), max(lifetime_ms, self.lifetime_ms))
                await pipe.execute()
        return tokens
