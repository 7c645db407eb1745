"""The worst case: what one user at the session cap costs everybody else.

Redis runs one script at a time, so a user's `list`, group change or
`delete_all` over all their sessions delays every other client for as long
as it runs. For a user at the hard maximum (10,000 sessions, each with a
129-character user agent and three groups) and at the default cap (100),
on a fresh private server: the median server time of each operation
(``INFO commandstats`` around each call, nothing else running), and another
user's `resolve` latency, one call at a time, on a quiet server and while
the heavy user's list / add / remove / create run in a loop (from a second
process).
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis

from bench.impls import UA
from bench.stats import percentile
from sessionkit import SessionStore
from sessionkit.defaults import MAX_SESSIONS_PER_USER, MAX_SESSIONS_PER_USER_LIMIT
from sessionkit.server import EmbeddedServer

GROUPS = ("member", "reader", "team-a")
ROOT = Path(__file__).parent.parent


async def _fill(store: SessionStore, user: str, n: int) -> None:
    for start in range(0, n, 200):
        await asyncio.gather(
            *(store.create(user, GROUPS, user_agent=UA) for _ in range(start, min(n, start + 200)))
        )


async def _server_us(admin: Any, call: Callable[[], Awaitable[object]]) -> float:
    """Server microseconds of one call (EVALSHA's, from INFO commandstats)."""

    async def stats() -> tuple[int, int]:
        s = (await admin.info("commandstats")).get("cmdstat_evalsha", {})  # none yet: 0, 0
        return int(s.get("calls", 0)), int(s.get("usec", 0))

    calls, usec = await stats()
    await call()
    calls2, usec2 = await stats()
    return (usec2 - usec) / max(1, calls2 - calls)


async def _median_us(admin: Any, call: Callable[[], Awaitable[object]], times: int) -> float:
    """The median of `times` calls' server time (a shared machine has outliers)."""
    return statistics.median([await _server_us(admin, call) for _ in range(times)])


async def _latencies(store: SessionStore, token: str, seconds: float) -> dict[str, float]:
    """Another user's resolve, one call at a time: p50 / p99 / max in ms."""
    out: list[float] = []
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        t0 = time.perf_counter()
        await store.resolve(token)
        out.append((time.perf_counter() - t0) * 1000)
    return {
        "p50_ms": percentile(out, 0.5),
        "p99_ms": percentile(out, 0.99),
        "max_ms": max(out),
        "calls": len(out),
    }


async def _one(url: str, n: int, seconds: float) -> dict[str, Any]:
    admin: Any = aioredis.Redis.from_url(url)
    heavy = SessionStore.from_url(url, prefix=f"wc{n}", max_sessions_per_user=n)
    light = SessionStore.from_url(url, prefix=f"wc{n}")
    try:
        await heavy.load_scripts()
        await _fill(heavy, "heavy", n)
        other = await light.create("other", "member", user_agent=UA)
        res: dict[str, Any] = {"sessions": n}
        res["list_us"] = await _median_us(admin, lambda: heavy.list("heavy"), 5)
        # Add then remove one group: sessions keep their size between rounds.
        adds, removes = [], []
        for _ in range(5):
            adds.append(await _server_us(admin, lambda: heavy.add_groups("heavy", "toggle")))
            removes.append(await _server_us(admin, lambda: heavy.remove_groups("heavy", "toggle")))
        res["add_groups_us"] = statistics.median(adds)
        res["remove_groups_us"] = statistics.median(removes)
        res["create_at_cap_us"] = await _median_us(
            admin, lambda: heavy.create("heavy", GROUPS, user_agent=UA), 100
        )
        res["resolve_quiet"] = await _latencies(light, other.token or "", seconds)
        # The heavy user's calls come from another process, so what the
        # resolves wait for is the server, not this process decoding lists.
        churn = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bench.worst_case", url, heavy.prefix, str(n),
            cwd=ROOT, stdout=asyncio.subprocess.PIPE,
        )  # fmt: skip
        try:
            assert churn.stdout is not None
            await churn.stdout.readline()  # "looping"
            res["resolve_busy"] = await _latencies(light, other.token or "", seconds)
        finally:
            churn.terminate()
            await churn.wait()
        deletes = []
        for round_ in range(3):
            if round_:
                await _fill(heavy, "heavy", n)
            deletes.append(await _server_us(admin, lambda: heavy.delete_all("heavy")))
        res["delete_all_us"] = statistics.median(deletes)
        return res
    finally:
        await heavy.aclose()
        await light.aclose()
        await admin.aclose()


async def measure_worst_case(binary: str | None, quick: bool) -> dict[str, Any]:
    """The figures above for the hard maximum (1,000 with --quick) and the
    default cap, each on a fresh private server."""
    sizes = (1_000 if quick else MAX_SESSIONS_PER_USER_LIMIT, MAX_SESSIONS_PER_USER)
    out: dict[str, Any] = {}
    for n in sizes:
        async with EmbeddedServer(binary=binary) as server:
            out[str(n)] = await _one(server.url, n, 0.3 if quick else 2.0)
    return out


def lines(worst: dict[str, Any]) -> list[str]:
    """The figures as table rows (markdown)."""
    out = [
        "| sessions of the user | list µs | add_groups µs | remove_groups µs | delete_all µs "
        "| create at cap µs | other user's resolve p99 ms, quiet / busy | busy max ms |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for n, r in worst.items():
        out.append(
            f"| {int(n):,} | {r['list_us']:,.0f} | {r['add_groups_us']:,.0f} | "
            f"{r['remove_groups_us']:,.0f} | {r['delete_all_us']:,.0f} | "
            f"{r['create_at_cap_us']:,.0f} | {r['resolve_quiet']['p99_ms']:.2f} / "
            f"{r['resolve_busy']['p99_ms']:.2f} | {r['resolve_busy']['max_ms']:.1f} |"
        )
    return out


async def _churn(url: str, prefix: str, n: int) -> None:
    """The heavy user's calls in a loop, until the process is ended."""
    async with SessionStore.from_url(url, prefix=prefix, max_sessions_per_user=n) as heavy:
        print("looping", flush=True)
        while True:
            await heavy.list("heavy")
            await heavy.add_groups("heavy", "toggle")
            await heavy.remove_groups("heavy", "toggle")
            await heavy.create("heavy", GROUPS, user_agent=UA)


if __name__ == "__main__":
    asyncio.run(_churn(sys.argv[1], sys.argv[2], int(sys.argv[3])))
