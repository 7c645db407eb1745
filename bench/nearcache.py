"""The near cache's section: resolves served from memory, and how soon a
change made in one process reaches another process's cache.

- ``resolve_cached``: 50 tasks resolve tokens of which 90 % of picks go to a
  hot tenth (the cache holds twice that tenth); ops/s, hit ratio and client
  CPU per call, beside the same loop on an uncached store in the same run,
  and a hits-only loop for the CPU of one hit.
- ``revocation``: a child process (its own store, its own cache) spins on a
  cached token; this process deletes the session (or removes a group) and
  notes when the call returned; the child notes when its cached resolve
  stopped returning the old session. The difference, p50 and p99, while
  other tasks create and delete sessions (each change an announcement).

Run as ``python -m bench.nearcache child`` it is that child.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import sys
import time
import uuid
from typing import Any

from bench.stats import percentile
from sessionkit import NearCache, SessionStore

CONCURRENCY = 50
HOT_SHARE = 0.9


async def _connected(store: SessionStore) -> None:
    """Until the store's invalidation channel is up (its first read opens it)."""
    await store.resolve("")
    for _ in range(1000):
        stats = store.near_cache_stats()
        if stats is not None and stats.connected:
            return
        await asyncio.sleep(0.01)
    raise RuntimeError("the near cache's invalidation channel never came up")


async def _resolve_loop(store: SessionStore, picks: list[str], duration: float) -> dict[str, Any]:
    """CONCURRENCY tasks resolving `picks` in turn for `duration` seconds."""
    done = 0
    missing = 0
    deadline = time.monotonic() + duration

    async def worker(offset: int) -> None:
        nonlocal done, missing
        i = offset
        n = len(picks)
        while time.monotonic() < deadline:
            for _ in range(64):
                if await store.resolve(picks[i % n]) is None:
                    missing += 1
                i += 1
            done += 64
            await asyncio.sleep(0)

    cpu0, t0 = time.process_time(), time.perf_counter()
    await asyncio.gather(*(worker(k * 7919) for k in range(CONCURRENCY)))
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - t0
    return {
        "ops_per_s": round(done / wall),
        "cpu_us_per_op": round(cpu / done * 1e6, 2),
        "missing": missing,
    }


async def resolve_cached(url: str, *, quick: bool) -> dict[str, Any]:
    sessions = 1_000 if quick else 10_000
    duration = 0.3 if quick else 2.0
    hot_n = sessions // 10
    rng = random.Random(7)
    prefix = f"bnear{uuid.uuid4().hex[:6]}"
    plain = SessionStore.from_url(url, prefix=prefix)
    cached = SessionStore.from_url(url, prefix=prefix, near_cache=NearCache(max_entries=2 * hot_n))
    try:
        tokens = [(await plain.create(f"u{i}")).token or "" for i in range(sessions)]
        hot, cold = tokens[:hot_n], tokens[hot_n:]
        picks = [
            rng.choice(hot) if rng.random() < HOT_SHARE else rng.choice(cold) for _ in range(50_000)
        ]
        await _connected(cached)
        await _resolve_loop(cached, picks, 0.3)  # warm
        before = cached.near_cache_stats()
        assert before is not None
        mixed = await _resolve_loop(cached, picks, duration)
        after = cached.near_cache_stats()
        assert after is not None
        hits, misses = after.hits - before.hits, after.misses - before.misses
        mixed["hit_ratio"] = round(hits / max(1, hits + misses), 3)
        hits_only = await _resolve_loop(cached, hot[: hot_n // 2], duration / 2)
        uncached = await _resolve_loop(plain, picks, duration / 2)
        return {
            "sessions": sessions,
            "hot_share": HOT_SHARE,
            "max_entries": 2 * hot_n,
            "concurrency": CONCURRENCY,
            "cached": mixed,
            "hits_only": hits_only,
            "uncached": uncached,
            "speedup": round(mixed["ops_per_s"] / max(1, uncached["ops_per_s"]), 1),
        }
    finally:
        await cached.aclose()
        await plain.aclose()


async def revocation(url: str, *, quick: bool) -> dict[str, Any]:
    """p50/p99 from a change's return here to its sight in another process."""
    n = 20 if quick else 200
    prefix = f"brev{uuid.uuid4().hex[:6]}"
    store = SessionStore.from_url(url, prefix=prefix)
    load_stop = asyncio.Event()

    async def load(k: int) -> None:  # other users' churn: announcements all the time
        while not load_stop.is_set():
            s = await store.create(f"load{k}")
            await store.delete(f"load{k}", s.token or "")

    try:
        made = [await store.create(f"r{i}", ["g"]) for i in range(n)]
        child = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "bench.nearcache",
            "child",
            url,
            prefix,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            env={**os.environ, "PYTHONPATH": os.getcwd()},
        )
        assert child.stdin is not None and child.stdout is not None
        child.stdin.write(json.dumps([s.token for s in made]).encode() + b"\n")
        await child.stdin.drain()
        assert (await child.stdout.readline()).strip() == b"ready"
        loaders = [asyncio.create_task(load(k)) for k in range(8)]
        returned: list[float] = []
        for i, s in enumerate(made):
            await asyncio.sleep(0.01)
            if i % 2:
                await store.remove_groups(f"r{i}", "g")
            else:
                await store.delete(f"r{i}", s.token or "")
            returned.append(time.monotonic())
        seen = json.loads(await child.stdout.readline())
        load_stop.set()
        await asyncio.gather(*loaders)
        await child.wait()
        lags = [(b - a) * 1000 for a, b in zip(returned, seen, strict=True)]
        return {
            "changes": n,
            "p50_ms": round(percentile(lags, 0.5), 3),
            "p99_ms": round(percentile(lags, 0.99), 3),
            "max_ms": round(max(lags), 3),
            "load_tasks": len(loaders),
        }
    finally:
        await store.aclose()


async def _child(url: str, prefix: str) -> None:
    """Cache every token, say "ready", then spin on each in turn until its
    change shows; print when each did (CLOCK_MONOTONIC, shared by processes)."""
    tokens: list[str] = json.loads(sys.stdin.readline())
    store = SessionStore.from_url(url, prefix=prefix, near_cache=True)
    try:
        await _connected(store)
        for token in tokens:
            await store.resolve(token)
        print("ready", flush=True)
        seen: list[float] = []
        for i, token in enumerate(tokens):
            give_up = time.monotonic() + 10
            while time.monotonic() < give_up:
                s = await store.resolve(token)
                if s is None or (i % 2 and "g" not in s.access_groups):
                    break
                await asyncio.sleep(0)
            seen.append(time.monotonic())
        print(json.dumps(seen), flush=True)
    finally:
        await store.aclose()


async def measure(url: str, *, quick: bool) -> dict[str, Any]:
    return {
        "resolve_cached": await resolve_cached(url, quick=quick),
        "revocation": await revocation(url, quick=quick),
    }


def lines(doc: dict[str, Any]) -> list[str]:
    """The section's lines for the table and the README."""
    rc, rv = doc.get("resolve_cached"), doc.get("revocation")
    out = []
    if rc:
        c, h, u = rc["cached"], rc["hits_only"], rc["uncached"]
        out.append(
            f"- resolve_cached ({rc['hot_share']:.0%} of picks on a hot tenth of "
            f"{rc['sessions']:,} sessions, c={rc['concurrency']}): {c['ops_per_s']:,} ops/s, "
            f"hit ratio {c['hit_ratio']:.1%}, {c['cpu_us_per_op']} µs client CPU per call; "
            f"uncached, same picks: {u['ops_per_s']:,} ops/s ({rc['speedup']}× faster cached)"
        )
        out.append(
            f"- hits only: {h['ops_per_s']:,} ops/s, {h['cpu_us_per_op']} µs client CPU per hit"
        )
    if rv:
        out.append(
            f"- revocation seen by another process's cache ({rv['changes']} deletes and group "
            f"removals, {rv['load_tasks']} tasks of churn beside): p50 {rv['p50_ms']} ms, "
            f"p99 {rv['p99_ms']} ms, max {rv['max_ms']} ms"
        )
    return out


if __name__ == "__main__" and sys.argv[1:2] == ["child"]:
    asyncio.run(_child(sys.argv[2], sys.argv[3]))
