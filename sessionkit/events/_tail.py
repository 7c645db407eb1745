"""Following the streams without a consumer group."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from datetime import UTC, datetime, timedelta

import anyio

from sessionkit.events._entries import (
    Event,
    _check,
    _seconds,
    _text,
)
from sessionkit.events._streams import _MORE_TRIES, _Streams, _Transient
from sessionkit.store import SessionStore


async def tail(
    store: SessionStore, *, since: datetime | None = None, block: float | timedelta = 1.0
) -> AsyncGenerator[Event, None]:
    """Follow every event stream of the store's prefix from `since` (default:
    now; a naive datetime is UTC), without a consumer group: nothing is acknowledged or remembered;
    `aclose()` it when done. For watching; use `EventConsumer` for work that
    must not miss events."""
    wait = _seconds(block, "block")
    streams = _Streams(store)
    if since is None:
        # Each stream's last entry now, not the clock: an entry written in the
        # same millisecond just before the start is not "from now".
        replies = await streams.run([("XREVRANGE", n, "+", "-", "COUNT", 1) for n in streams.names])
        ends = [_check(r, "reading the last events") for r in replies]
        last = {
            n: _text(end[0][0]) if end else "0-0"
            for n, end in zip(streams.names, ends, strict=True)
        }
    else:
        if since.tzinfo is None:
            since = since.replace(tzinfo=UTC)  # as the CLI reads times: UTC
        start_ms = int(since.timestamp() * 1000)
        last = dict.fromkeys(streams.names, f"{max(start_ms - 1, 0)}-{2**64 - 1}")
    attempt = 0
    while True:
        try:
            events = await streams.read(last, count=100, block_ms=int(wait * 1000))
            attempt = 0
        except _Transient as exc:
            if attempt >= store.retries + _MORE_TRIES:
                raise exc.error from exc.__cause__
            attempt += 1
            await anyio.sleep(0.1 * attempt)
            continue
        if not events and streams.cluster:
            await anyio.sleep(wait)
        for e in events:
            last[e.stream] = e.id
            yield e
