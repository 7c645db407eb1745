"""The near cache: `resolve` and `get` answered from process memory, kept
honest by the server.

Turn it on with ``SessionStore(client, near_cache=True)`` (or a `NearCache`
with your bounds). A session read from the server is kept here until any
write touches its key or its user's groups (Redis announces it, see
`sessionkit._tracking`), until it would expire, or until `NearCache.max_age`,
whichever comes first; while the announcements cannot be received the cache
is empty and every read goes to the server.

What it does not promise: a change made by another process is seen here
once its announcement arrives (a fraction of a millisecond on one host;
`python -m bench` measures it), not at the instant the change's call
returns there. Reads that must see every change at once can stay off it
(another store on the same client without ``near_cache``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, NamedTuple

import msgspec

from sessionkit import _keys as keys
from sessionkit._model import DIGEST, Session
from sessionkit._tracking import Tracking
from sessionkit._transport import Transport
from sessionkit.errors import ValidationError

if TYPE_CHECKING:
    from sessionkit.metrics import PrometheusMetrics

log = logging.getLogger("sessionkit.nearcache")

#: The bounds of `NearCache`'s options.
MAX_ENTRIES_LIMIT: Final = 10_000_000
MAX_AGE_LIMIT: Final = 3600.0
#: How many recent invalidations a read in flight is checked against (a read
#: outlived by more than this many is not kept).
_LOG_LENGTH: Final = 4096


@dataclass(frozen=True)
class NearCache:
    """The near cache's bounds: at most `max_entries` sessions (the least
    recently used go first), none kept longer than `max_age` seconds (a safety
    net behind the server's announcements)."""

    max_entries: int = 10_000
    max_age: float = 5.0

    def __post_init__(self) -> None:
        n = self.max_entries
        if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_ENTRIES_LIMIT:
            raise ValidationError(
                f"max_entries must be an int from 1 to {MAX_ENTRIES_LIMIT:,}, got {n!r}",
                details={"parameter": "max_entries"},
            )
        age = self.max_age
        if (
            isinstance(age, bool)
            or not isinstance(age, int | float)
            or not 0 < age <= MAX_AGE_LIMIT
        ):
            raise ValidationError(
                f"max_age must be seconds above 0 and at most {MAX_AGE_LIMIT:g}, got {age!r}",
                details={"parameter": "max_age"},
            )


@dataclass(frozen=True)
class NearCacheStats:
    """What the near cache has done since the store was made."""

    hits: int
    misses: int
    entries: int
    invalidations: int
    #: Whether the server's announcements are being received (else bypassed).
    connected: bool

    @property
    def hit_ratio(self) -> float:
        total = self.hits + self.misses
        return self.hits / total if total else 0.0


class Ticket(NamedTuple):
    """Taken before a read goes to the server: whether its answer may be kept."""

    epoch: int
    seq: int


class _Entry:
    __slots__ = ("data", "fresh_until", "groups_key", "key", "session", "touch_at", "touching")

    def __init__(
        self, session: Session, key: bytes, groups_key: bytes, fresh_until: float, touch_at: float
    ) -> None:
        self.session = session
        self.data = msgspec.json.encode(session.data) if session.data else None
        self.key = key
        self.groups_key = groups_key
        self.fresh_until = fresh_until  # time.monotonic()
        self.touch_at = touch_at  # time.time(), when the server is due a touch
        self.touching = False


def _copy(entry: _Entry) -> Session:
    """A kept session to hand out: its own lists and dicts, so that a caller
    who changes it changes nobody else's (the rest is immutable)."""
    s = entry.session
    return msgspec.structs.replace(
        s,
        access_groups=list(s.access_groups),
        data=msgspec.json.decode(entry.data) if entry.data is not None else {},
    )


class Near:
    """One store's near cache (internal: the store drives it)."""

    def __init__(
        self,
        options: NearCache,
        transport: Transport,
        prefix: str,
        touch_every_ms: int,
        touch: Callable[[str], Coroutine[Any, Any, object]],
        metrics: PrometheusMetrics | None = None,
    ) -> None:
        self.options = options
        self.prefix = prefix
        self._touch_every = touch_every_ms / 1000
        self._touch = touch
        self._entries: OrderedDict[str, _Entry] = OrderedDict()  # by token
        self._by_key: dict[bytes, str] = {}
        self._by_groups: dict[bytes, set[str]] = {}
        self._log: deque[tuple[int, bytes | None]] = deque(maxlen=_LOG_LENGTH)
        self._seq = 0
        self._epoch = 0
        self._up = False
        self._touches: set[asyncio.Task[object]] = set()
        self.hits = self.misses = self.invalidations = 0
        self._metrics = metrics
        self.tracking = Tracking(transport, prefix, self.invalidate, self._state)
        transport.watch_topology(self.tracking.resync)

    # -- reads ------------------------------------------------------------

    def lookup(self, token: object, user_id: str | None = None) -> Session | None:
        """The cached session of this token (of `user_id`, if given), as a
        copy of its own, or None: ask the server."""
        if not self._up:
            self.tracking.start()
            return None
        entry = self._entries.get(token) if type(token) is str else None
        if entry is None or (user_id is not None and entry.session.user_id != user_id):
            self._missed()
            return None
        if time.monotonic() >= entry.fresh_until:
            self._drop(token)  # type: ignore[arg-type]
            self._missed()
            return None
        self._entries.move_to_end(token)  # type: ignore[arg-type]
        self.hits += 1
        if self._metrics is not None:
            self._metrics.near_cache_lookup(True)
        if not entry.touching and time.time() >= entry.touch_at:
            self._send_touch(token, entry)  # type: ignore[arg-type]
        return _copy(entry)

    def _missed(self) -> None:
        self.misses += 1
        if self._metrics is not None:
            self._metrics.near_cache_lookup(False)

    def ticket(self) -> Ticket | None:
        """Before a read goes to the server; None: its answer cannot be kept."""
        return Ticket(self._epoch, self._seq) if self._up else None

    def keep(
        self, ticket: Ticket, token: str, bucket: int, raw: bytes, session: Session
    ) -> Session:
        """Keep what a read returned, unless the key or the user's groups
        changed while the read was in flight (or the channel broke); the
        session to hand out (never the kept one itself)."""
        if ticket.epoch != self._epoch or not self._up:
            return session
        key = keys.session_key(self.prefix, bucket, session.id).encode()
        digest = raw[DIGEST : DIGEST + keys.DIGEST_CHARS].decode("ascii")
        groups_key = keys.groups_key(self.prefix, bucket, digest).encode()
        if self._seq != ticket.seq:
            first = self._log[0][0] if self._log else self._seq + 1
            if first > ticket.seq + 1:
                return session  # more invalidations than the log holds: cannot tell
            for seq, changed in reversed(self._log):
                if seq <= ticket.seq:
                    break
                if changed is None or changed in (key, groups_key):
                    return session
        remaining = session.expires_at.timestamp() - time.time()
        if remaining <= 0:
            return session
        self._drop(token)
        entry = _Entry(
            session,
            key,
            groups_key,
            time.monotonic() + min(self.options.max_age, remaining),
            session.last_active_at.timestamp() + self._touch_every,
        )
        self._entries[token] = entry
        self._by_key[key] = token
        self._by_groups.setdefault(groups_key, set()).add(token)
        while len(self._entries) > self.options.max_entries:
            self._drop(next(iter(self._entries)))
        return _copy(entry)

    def stats(self) -> NearCacheStats:
        return NearCacheStats(
            self.hits, self.misses, len(self._entries), self.invalidations, self._up
        )

    async def aclose(self) -> None:
        await self.tracking.aclose()
        for task in list(self._touches):
            task.cancel()
        self._clear()

    # -- what the server says ---------------------------------------------

    def invalidate(self, changed: list[bytes] | None) -> None:
        """Keys that changed (None: every key, e.g. FLUSHALL)."""
        self.invalidations += 1
        if self._metrics is not None:
            self._metrics.near_cache_invalidated()
        if changed is None:
            self._seq += 1
            self._log.append((self._seq, None))
            self._clear()
            return
        for key in changed:
            self._seq += 1
            self._log.append((self._seq, key))
            token = self._by_key.get(key)
            if token is not None:
                self._drop(token)
            tokens = self._by_groups.get(key)
            if tokens:
                for token in list(tokens):
                    self._drop(token)

    def _state(self, up: bool) -> None:
        if up:
            self._epoch += 1
            self._log.clear()
        self._up = up
        self._clear()

    # -- the entries ------------------------------------------------------

    def _drop(self, token: str) -> None:
        entry = self._entries.pop(token, None)
        if entry is None:
            return
        self._by_key.pop(entry.key, None)
        tokens = self._by_groups.get(entry.groups_key)
        if tokens is not None:
            tokens.discard(token)
            if not tokens:
                del self._by_groups[entry.groups_key]

    def _clear(self) -> None:
        self._entries.clear()
        self._by_key.clear()
        self._by_groups.clear()

    def _send_touch(self, token: str, entry: _Entry) -> None:
        """The server is due a touch (last-active, the idle timeout): send it
        without making this caller wait. Its write announces the key, which
        drops the entry; the next read fills it again."""
        entry.touching = True
        task = asyncio.get_running_loop().create_task(self._touch(token))
        self._touches.add(task)
        task.add_done_callback(self._touched)

    def _touched(self, task: asyncio.Task[object]) -> None:
        self._touches.discard(task)
        if not task.cancelled() and task.exception() is not None:
            # A failed touch only delays last-active; the entry's next fill
            # (at most max_age away) tries again.
            log.debug("near cache: a touch failed (%s)", type(task.exception()).__name__)


__all__ = ["NearCache", "NearCacheStats"]
