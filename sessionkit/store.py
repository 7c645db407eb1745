"""`SessionStore`: the engine. Every operation is one EVALSHA of a static Lua
script, so each is atomic and costs one round trip."""

from __future__ import annotations

import asyncio
import builtins
import functools
import inspect
from collections.abc import Callable, Coroutine, Iterable
from datetime import timedelta
from types import MethodType, TracebackType
from typing import (
    TYPE_CHECKING,
    Any,
    Concatenate,
    Final,
    Literal,
    ParamSpec,
    Self,
    TypedDict,
    TypeVar,
    Unpack,
    cast,
)
from urllib.parse import urlsplit, urlunsplit

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from sessionkit import _keys as keys
from sessionkit import _redispy, _transport
from sessionkit import _scripts as scripts
from sessionkit import _validate as validate
from sessionkit._model import Session, decode_session, encode_body, unpack_listing
from sessionkit._observe import Observer, TracerProvider
from sessionkit._scripts import Scripts
from sessionkit.defaults import (
    EVENTS_MAXLEN,
    LIFETIME,
    MAX_EVENTS_MAXLEN,
    MAX_GROUPS_PER_SESSION,
    MAX_SESSIONS_PER_USER,
    POOL_SIZE,
    POOL_TIMEOUT,
    PREFIX,
    TOUCH_INTERVAL,
)
from sessionkit.errors import LimitExceeded, ValidationError
from sessionkit.nearcache import Near, NearCache, NearCacheStats

if TYPE_CHECKING:
    from sessionkit.metrics import PrometheusMetrics

Client = aioredis.Redis | RedisCluster
#: What `SessionStore.revoke` did.
Revoked = Literal["deleted", "none", "another_user"]
_REVOKED: dict[int, Revoked] = {1: "deleted", 0: "none", -1: "another_user"}
Duration = int | float | timedelta

P = ParamSpec("P")
R = TypeVar("R")

#: Tokens a store keeps what they derive for by default (`token_cache`;
#: `_scripts.token_read`: the bucket, the session id, resolve's packed
#: call), the most recently used: deriving them is about a third of a
#: resolve's CPU in a busy process (a BLAKE2b digest, base64, the
#: packing), and an app sees the same tokens again and again. About 600
#: bytes each beside the token, 10 MB when full; as many as the decoded
#: headers kept (`_model.TIMES_CACHED`), for the same working set. The
#: derivation holds nothing from the server, so nothing in it goes stale.
TOKENS_CACHED: Final = 16_384
#: The largest `token_cache` a store takes (about 600 MB full).
MAX_TOKENS_CACHED: Final = 1_000_000


#: Each observed method's name: its wrapper (what the class holds) and
#: its body (see `_observed`).
_OBSERVED: dict[str, tuple[Callable[..., Any], Callable[..., Any]]] = {}


def _observed(
    operation: str,
) -> Callable[
    [Callable[Concatenate[SessionStore, P], Coroutine[Any, Any, R]]],
    Callable[Concatenate[SessionStore, P], Coroutine[Any, Any, R]],
]:
    """Report the calls of a store method to the store's observer (metrics,
    tracing), if it has one; otherwise call it as it is. A store with no
    observer binds its methods to their bodies instead (`_unobserved`)."""

    def wrap(
        method: Callable[Concatenate[SessionStore, P], Coroutine[Any, Any, R]],
    ) -> Callable[Concatenate[SessionStore, P], Coroutine[Any, Any, R]]:
        # Not itself a coroutine function: it returns the method's coroutine
        # (or the observer's around it) and adds no coroutine frame of its own.
        def call(
            self: SessionStore, /, *args: P.args, **kwargs: P.kwargs
        ) -> Coroutine[Any, Any, R]:
            if self._observer is None:
                return method(self, *args, **kwargs)
            return self._observer.call(operation, method(self, *args, **kwargs))

        functools.update_wrapper(call, method)
        _OBSERVED[method.__name__] = (call, method)
        return _as_coroutine_function(call)

    return wrap


def _unobserved(store: SessionStore) -> None:
    """Bind `store`'s observed methods straight to their bodies: with no
    observer, the wrapper only forwarded each call, and forwarding any
    arguments cost 3-6 % of a resolve's client instructions. A method a
    subclass overrides stays as the subclass has it."""
    cls = type(store)
    for name, (wrapper, method) in _OBSERVED.items():
        if getattr(cls, name, None) is wrapper:
            setattr(store, name, MethodType(method, store))


def _as_coroutine_function(
    f: Callable[P, Coroutine[Any, Any, R]],
) -> Callable[P, Coroutine[Any, Any, R]]:
    """`f`, marked for `inspect.iscoroutinefunction` (Python 3.12 and
    later) and `asyncio.iscoroutinefunction` as the async method it stands
    for: frameworks that dispatch on it see what they expect."""
    mark = getattr(inspect, "markcoroutinefunction", None)
    if mark is not None:
        return cast("Callable[P, Coroutine[Any, Any, R]]", mark(f))
    f._is_coroutine = asyncio.coroutines._is_coroutine  # type: ignore[attr-defined]
    return f


class StoreOptions(TypedDict, total=False):
    """`SessionStore`'s options, as `SessionStore.from_url` takes them."""

    prefix: str
    lifetime: Duration
    idle_timeout: Duration | None
    max_sessions_per_user: int
    touch_interval: Duration
    pipelining: bool
    retries: int
    events: bool
    events_maxlen: int
    metrics: bool | PrometheusMetrics
    tracing: bool | TracerProvider
    near_cache: bool | NearCache
    token_cache: int


class SessionStore:
    """Sessions of many users in one Redis (or Redis Cluster).

    `client` is a `redis.asyncio.Redis`, a `redis.asyncio.RedisCluster` or a
    fakeredis async client; the store does not close a client it was given.
    `lifetime` is the absolute lifetime of a session and `idle_timeout` the
    optional sliding timeout (seconds or `timedelta`); `max_sessions_per_user`
    (1 to 10,000, default 100) caps what one user's whole-user calls cost
    everybody else: a create at the cap evicts the user's oldest sessions;
    `touch_interval` bounds how often reads rewrite last-active time when
    there is no idle timeout.
    With `events` (the default), every change also appends an event to a
    Redis Stream in the same script (see `sessionkit.events`); each bucket's
    stream keeps about `events_maxlen` events. `metrics` (True for
    prometheus-client's global registry, or a `sessionkit.metrics.
    PrometheusMetrics`) counts and times every call; `tracing` (True for the
    global OpenTelemetry tracer provider, or a provider) makes a span of each.
    With `pipelining` (the default, on redis-py clients, one server or a
    cluster), calls that overlap share one socket write per server; a call
    made alone goes out at once. A call whose connection breaks is retried
    `retries` times on a fresh one (every script is safe to repeat); a
    server that does not answer in time is not retried. Slot moves and
    failovers on a cluster are followed (see `sessionkit._transport`).
    With `near_cache` (True, or a `sessionkit.NearCache` with its bounds;
    off by default), `resolve` and `get` answer from process memory while the
    server vouches that the session has not changed (see
    `sessionkit.nearcache`); call `aclose()` to stop its connections.
    `token_cache` is how many tokens the store keeps what they derive for
    (see `TOKENS_CACHED`; 0: none).
    """

    def __init__(
        self,
        client: Client,
        *,
        prefix: str = PREFIX,
        lifetime: Duration = LIFETIME,
        idle_timeout: Duration | None = None,
        max_sessions_per_user: int = MAX_SESSIONS_PER_USER,
        touch_interval: Duration = TOUCH_INTERVAL,
        pipelining: bool = True,
        retries: int = 2,
        events: bool = True,
        events_maxlen: int = EVENTS_MAXLEN,
        metrics: bool | PrometheusMetrics = False,
        tracing: bool | TracerProvider = False,
        near_cache: bool | NearCache = False,
        token_cache: int = TOKENS_CACHED,
    ) -> None:
        self.client = client
        self.prefix = validate.prefix(prefix)
        self.lifetime_ms = validate.duration_ms(lifetime, "lifetime")
        self.idle_timeout_ms = validate.duration_ms(idle_timeout, "idle_timeout", optional=True)
        self.max_sessions_per_user = validate.max_sessions_per_user(max_sessions_per_user)
        self.touch_interval_ms = validate.duration_ms(touch_interval, "touch_interval")
        if isinstance(retries, bool) or not isinstance(retries, int) or not 0 <= retries <= 10:
            raise ValidationError(
                f"retries must be an int from 0 to 10, got {retries!r}",
                details={"parameter": "retries"},
            )
        self.retries = retries
        if not isinstance(events, bool):
            raise ValidationError(
                f"events must be True or False, got {events!r}", details={"parameter": "events"}
            )
        self.events = events
        if events_maxlen is None:
            raise ValidationError(
                "events_maxlen must be a positive int (turn events off with events=False)",
                details={"parameter": "events_maxlen"},
            )
        self.events_maxlen = validate.int_in_range(
            events_maxlen, "events_maxlen", 1, MAX_EVENTS_MAXLEN
        )
        self._observer = Observer.make(metrics, tracing)
        if self._observer is None:
            _unobserved(self)
        self.metrics = self._observer.metrics if self._observer else None
        self._owns_client = False
        self.transport = _transport.Transport(client, batching=pipelining, retries=retries)
        near = _near_cache_options(near_cache, client)
        # A cached session must be readable without a write: with an idle
        # timeout, reads then slide it at most every tenth of it (or touch
        # interval), so a session may end up to that much early.
        slide_ms = (
            min(self.touch_interval_ms, max(1, self.idle_timeout_ms // 10))
            if near is not None and self.idle_timeout_ms
            else 0
        )
        #: What the scripts take from these settings (see `sessionkit._scripts`).
        self.settings = scripts.Settings(
            prefix=self.prefix,
            lifetime_ms=self.lifetime_ms,
            idle_timeout_ms=self.idle_timeout_ms,
            max_sessions_per_user=self.max_sessions_per_user,
            touch_interval_ms=self.touch_interval_ms,
            events_maxlen=self.events_maxlen if events else 0,
            slide_interval_ms=slide_ms,
        )
        self.token_cache = validate.int_in_range(token_cache, "token_cache", 0, MAX_TOKENS_CACHED)
        self._token_reads = functools.lru_cache(maxsize=self.token_cache)(
            functools.partial(scripts.token_read, self.settings)
        )
        self._near = (
            None
            if near is None
            else Near(
                near,
                self.transport,
                self.prefix,
                slide_ms or self.touch_interval_ms,
                self._touch,
                self.metrics,
            )
        )

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        cluster: bool | None = None,
        pool_size: int = POOL_SIZE,
        socket_timeout: float = 5.0,
        **options: Unpack[StoreOptions],
    ) -> SessionStore:
        """A store with its own client, closed by `aclose()`.

        `redis://`, `rediss://` (TLS) and `unix://` URLs reach one server;
        `redis+cluster://` / `rediss+cluster://` (or `cluster=True`) a Redis
        Cluster through the node in the URL. Callers beyond `pool_size`
        concurrent operations wait for a connection instead of failing. On
        one server, redis-py's own retries are off: the store retries a broken
        connection itself and reports a timeout at once. On a cluster, redis-py
        keeps its retries, which follow failovers and slot moves.
        """
        scheme = urlsplit(url).scheme
        if scheme.endswith("+cluster"):
            cluster = True
            url = urlunsplit(urlsplit(url)._replace(scheme=scheme.removesuffix("+cluster")))
        if scheme.removesuffix("+cluster") not in ("redis", "rediss", "unix"):
            raise ValidationError(
                f"unsupported URL scheme {scheme!r}: use redis://, rediss://, unix:// "
                "or redis+cluster://",
                details={"parameter": "url"},
            )
        client: Client
        if cluster:
            client = RedisCluster.from_url(
                url,
                max_connections=pool_size,
                socket_timeout=socket_timeout,
                socket_connect_timeout=socket_timeout,
            )
        else:
            pool = aioredis.BlockingConnectionPool.from_url(
                url,
                max_connections=pool_size,
                retry=Retry(NoBackoff(), 0),
                timeout=POOL_TIMEOUT,
                socket_timeout=socket_timeout,
                socket_connect_timeout=socket_timeout,
            )
            client = aioredis.Redis.from_pool(pool)  # closes the pool on aclose
        store = cls(client, **options)
        store._owns_client = True
        return store

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Stop the near cache, if on, and close the client if the store
        made it (`from_url`)."""
        self._token_reads.cache_clear()
        if self._near is not None:
            await self._near.aclose()
        if self._owns_client:
            await self.client.aclose()

    def near_cache_stats(self) -> NearCacheStats | None:
        """What the near cache has done (hits, misses, ...); None when it is off."""
        return None if self._near is None else self._near.stats()

    async def load_scripts(self) -> None:
        """Load every script now (on every primary of a cluster), so that the
        first call of each operation is already a single EVALSHA."""
        try:
            for script in Scripts.all():
                await self.client.script_load(script.source)
        except Exception as exc:
            if _transport.classify(exc) is None:
                raise
            raise _transport.error(exc, "load_scripts") from exc

    # -- operations ---------------------------------------------------------

    @_observed("create")
    async def create(
        self,
        user_id: str,
        access_groups: str | Iterable[str] = (),
        *,
        user_agent: str | None = None,
        data: dict[str, Any] | None = None,
    ) -> Session:
        """Start a new session for `user_id`; the returned session has its token.

        Creating the same token twice (a retried call) makes one session.
        """
        uid = validate.user_id(user_id)
        groups = validate.groups(access_groups, "access_groups")
        ua = validate.user_agent(user_agent)
        body = encode_body(uid, ua, validate.data(data))
        digest, bucket = keys.user_digest(uid)
        token = keys.new_token(bucket)
        return await self._create(uid, digest, bucket, token, body, groups)

    async def _create(
        self,
        uid: str,
        digest: str,
        bucket: int,
        token: str,
        body: bytes,
        groups: tuple[str, ...],
    ) -> Session:
        sid = keys.session_id(token)
        call = scripts.create_call(self.settings, uid, digest, bucket, sid, body, groups)
        reply = await self.transport.call(call)
        if isinstance(reply, list):  # it evicted sessions: {value, entry, evicted, ...}
            value, entry, evicted = reply[0], reply[1], len(reply) - 2
        else:  # the value, then its entry
            value, entry, evicted = reply, None, 0
        if self.metrics is not None:
            self.metrics.sessions_created()
            self.metrics.sessions_deleted("evicted", evicted)
        return decode_session(value, entry, sid, token, self.idle_timeout_ms)

    @_observed("get")
    async def get(self, user_id: str, token: str) -> Session | None:
        """The session of `user_id` with this token, or None (unknown,
        expired, malformed, or another user's token)."""
        uid = validate.user_id(user_id)
        if self._near is not None and (hit := self._near.lookup(token, uid)) is not None:
            return hit
        digest, bucket = keys.user_digest(uid)
        read = self._token_read(token)
        if read is None or read[0] != bucket:
            return None
        sid = read[1]
        return await self._read(
            scripts.get_call(self.settings, bucket, sid, digest), bucket, sid, token
        )

    @_observed("resolve")
    async def resolve(self, token: str) -> Session | None:
        """The session a token belongs to, from the token alone, or None."""
        if self._near is not None and (hit := self._near.lookup(token)) is not None:
            return hit
        read = self._token_read(token)
        if read is None:
            return None
        bucket, sid, call = read
        if self._near is not None:
            return await self._read(call, bucket, sid, token)
        # `_read` without a near cache, inline: the call every request
        # makes is a coroutine frame shallower (3 % of its instructions).
        raw = await self.transport.call(call)
        if not raw:
            return None
        return decode_session(raw, None, sid, token, self.idle_timeout_ms)

    def _token_read(self, token: object) -> scripts.TokenRead | None:
        """What `token` derives (see `TOKENS_CACHED`), or None if it is not
        a well-formed token. Only a string of a token's length is kept, so
        no other input (a megabyte of text, something unhashable) can make
        the cache hold more or fail."""
        if token.__class__ is str and len(token) == keys.TOKEN_CHARS:
            return self._token_reads(token)
        return scripts.token_read(self.settings, token)

    async def _read(
        self, call: scripts.Call, bucket: int, sid: str, token: str, *, cached: bool = True
    ) -> Session | None:
        near = self._near if cached else None
        ticket = near.ticket() if near is not None else None
        raw = await self.transport.call(call)
        if not raw:
            return None
        session = decode_session(raw, None, sid, token, self.idle_timeout_ms)
        if near is not None and ticket is not None:
            return near.keep(ticket, token, bucket, raw, session)
        return session

    async def _touch(self, token: str) -> object:
        """A read for its side effect (last-active, the idle timeout), for
        a near-cache hit that is due one."""
        read = self._token_read(token)
        assert read is not None  # the cache holds only tokens read by them
        bucket, sid, call = read
        return await self._read(call, bucket, sid, token, cached=False)

    @_observed("list")
    async def list(self, user_id: str) -> builtins.list[Session]:
        """Every live session of `user_id`, oldest first, without tokens."""
        uid = validate.user_id(user_id)
        digest, bucket = keys.user_digest(uid)
        reply = await self.transport.call(scripts.list_call(self.settings, bucket, digest))
        sessions = [
            decode_session(value, entry, sid, None, self.idle_timeout_ms)
            for sid, value, entry in unpack_listing(reply)
        ]
        sessions.sort(key=lambda s: (s.created_at, s.id))
        return sessions

    @_observed("delete")
    async def delete(self, user_id: str, token: str) -> bool:
        """Delete the session of `user_id` with this token; False if there was none."""
        uid = validate.user_id(user_id)
        digest, bucket = keys.user_digest(uid)
        if keys.token_bucket(token) != bucket:
            return False
        return await self._delete(uid, digest, bucket, keys.session_id(token)) == 1

    @_observed("delete_by_id")
    async def delete_by_id(self, user_id: str, session_id: str) -> bool:
        """Delete a session of `user_id` by its public id (e.g. "sign out that device")."""
        uid = validate.user_id(user_id)
        digest, bucket = keys.user_digest(uid)
        if keys.session_id_bucket(session_id) != bucket:
            return False  # malformed, or another user's (their bucket differs)
        return await self._delete(uid, digest, bucket, session_id) == 1

    @_observed("revoke")
    async def revoke(self, user_id: str, token_or_id: str) -> Revoked:
        """End the session of `user_id` named by its token or its public id,
        and say what happened: ``"deleted"``; ``"none"`` (no such session:
        unknown, expired, malformed); ``"another_user"`` (it is someone
        else's, and nothing is deleted). For "sign out that device"
        endpoints, which must tell a stale handle from a stranger's."""
        uid = validate.user_id(user_id)
        if not isinstance(token_or_id, str):
            raise ValidationError(
                f"token_or_id must be text, got {type(token_or_id).__name__}",
                details={"parameter": "token_or_id"},
            )
        sid = (
            keys.session_id(token_or_id)
            if keys.token_bucket(token_or_id) is not None
            else token_or_id
        )
        bucket = keys.session_id_bucket(sid)
        if bucket is None:
            return "none"
        digest, user_bucket = keys.user_digest(uid)
        if bucket == user_bucket:
            return _REVOKED[await self._delete(uid, digest, bucket, sid)]
        # Another bucket, so not this user's: only whether it exists is asked.
        key = keys.session_key(self.prefix, bucket, sid)
        found = await self.transport.command("revoke", key, "EXISTS", key)
        return "another_user" if found else "none"

    async def _delete(self, uid: str, digest: str, bucket: int, sid: str) -> int:
        """1: deleted; 0: no such session; -1: the session is another user's."""
        n = await self.transport.call(scripts.delete_call(self.settings, uid, digest, bucket, sid))
        if self.metrics is not None:
            self.metrics.sessions_deleted("deleted", int(n == 1))
        return int(n)

    @_observed("delete_all")
    async def delete_all(
        self, user_id: str, *, except_token: str | None = None, except_id: str | None = None
    ) -> int:
        """Delete every session of `user_id` but the one of `except_token` (or
        with the public id `except_id`), if given: "sign out everywhere else".
        Returns how many were deleted."""
        uid = validate.user_id(user_id)
        digest, bucket = keys.user_digest(uid)
        keep = ""
        if except_token is not None and keys.token_bucket(except_token) == bucket:
            keep = keys.session_id(except_token)
        elif except_id is not None and keys.session_id_bucket(except_id) == bucket:
            keep = except_id
        reply = await self.transport.call(
            scripts.delete_all_call(self.settings, uid, digest, bucket, keep)
        )
        if self.metrics is not None:
            self.metrics.sessions_deleted("all_deleted", int(reply[0]))
        return int(reply[0])

    @_observed("add_groups")
    async def add_groups(self, user_id: str, groups: str | Iterable[str]) -> int:
        """Add access group(s) to every live session of `user_id`, atomically;
        returns how many sessions changed."""
        return await self._groups("add", user_id, groups)

    @_observed("remove_groups")
    async def remove_groups(self, user_id: str, groups: str | Iterable[str]) -> int:
        """Remove access group(s) from every live session of `user_id`,
        atomically; returns how many sessions changed."""
        return await self._groups("remove", user_id, groups)

    async def _groups(self, mode: str, user_id: str, groups: str | Iterable[str]) -> int:
        uid = validate.user_id(user_id)
        wanted = validate.groups(groups)
        if not wanted:
            return 0
        digest, bucket = keys.user_digest(uid)
        reply = await self.transport.call(
            scripts.groups_call(self.settings, mode, uid, digest, bucket, wanted)
        )
        changed = int(reply[0])
        if changed < 0:
            raise LimitExceeded(
                f"adding these access groups would give a session of this user more than "
                f"{MAX_GROUPS_PER_SESSION}; no session was changed",
                details={"limit": "groups_per_session", "maximum": MAX_GROUPS_PER_SESSION},
            )
        return changed


def _near_cache_options(near_cache: object, client: object) -> NearCache | None:
    if near_cache is False:
        return None
    options = NearCache() if near_cache is True else near_cache
    if not isinstance(options, NearCache):
        raise ValidationError(
            f"near_cache must be True, False or a NearCache, got {near_cache!r}",
            details={"parameter": "near_cache"},
        )
    if not (isinstance(client, RedisCluster) or _redispy.is_redis_py_client(client)):
        raise ValidationError(
            "near_cache needs a redis-py client (redis.asyncio.Redis or RedisCluster): "
            "it listens for the server's CLIENT TRACKING announcements",
            details={"parameter": "near_cache"},
        )
    return options


__all__ = ["Client", "Duration", "Revoked", "SessionStore", "StoreOptions"]
