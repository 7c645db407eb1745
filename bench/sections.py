"""The sections of a run beyond the scenario table: the concurrency sweep,
the embedded cluster, and several client processes against one server."""

from __future__ import annotations

import asyncio
import json
import os
import random
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

from bench.impls import Impl, make_impls
from bench.runner import run_interleaved, run_scenario
from bench.scenarios import SCENARIOS, Scenario
from sessionkit import SessionStore
from sessionkit.defaults import POOL_SIZE
from sessionkit.server import EmbeddedCluster

#: The concurrencies of the sweep, and what it sweeps.
SWEEP = (1, 10, 50, 200)
SWEPT = ("resolve", "create")
#: c = 1 runs this many times as long, in as many times the turns: its
#: ratios are the closest of the sweep, and at one second each they moved
#: by ±4 % between runs (one call at a time meets more of the host's
#: moments than its few thousand calls average out).
ONE_AT_A_TIME_LONGER = 3


def scenario_named(name: str) -> Scenario:
    return next(s for s in SCENARIOS if s.name == name)


def slices(duration: float) -> int:
    """Turns per implementation when runs are interleaved: each at least
    0.1 s (a turn that short still holds thousands of operations at c=1),
    at most 5."""
    return max(1, min(5, int(duration / 0.1 + 1e-9)))


async def sweep(
    impls: list[Impl],
    *,
    duration: float,
    scale: float,
    levels: tuple[int, ...] = SWEEP,
    tick: Callable[[], None] | None = None,
) -> list[dict[str, Any]]:
    """resolve and create at each concurrency for every implementation, the
    implementations interleaved at each level (`run_interleaved`: they share
    the machine's moments; c = 1 for longer, see `ONE_AT_A_TIME_LONGER`),
    each one's setup made once per scenario; plus,
    at c=1, a bare redis-py ``GET`` as the round trip's yardstick, driven by
    the same loop."""
    out: list[dict[str, Any]] = []
    for name in SWEPT:
        scenario = scenario_named(name)
        entries: list[tuple[Impl, Any]] = []
        for impl in impls:
            if scenario.needs <= impl.ops:
                entries.append((impl, await scenario.prepare(impl, random.Random(1), scale)))
        if not entries:
            continue
        for c in levels:
            level = list(entries)
            if name == "resolve" and c == 1:
                level.insert(0, (await _bare_get(entries[0][0].client), entries[0][1]))
            longer = ONE_AT_A_TIME_LONGER if c == 1 else 1
            results = await run_interleaved(
                scenario,
                level,
                concurrency=c,
                duration=duration * longer,
                slices=slices(duration) * longer,
            )
            out += [asdict(r) for r in results]
            if tick:
                for _ in entries:
                    tick()
    return out


class _BareGet:
    """A "store" whose resolve is one redis-py ``GET`` of one key."""

    key = "bench:bare-get"

    def __init__(self, client: Any) -> None:
        self.client = client

    async def resolve(self, token: str) -> bytes:
        value: bytes = await self.client.get(self.key)
        return value


async def _bare_get(client: Any) -> Impl:
    """The bare ``GET`` as an implementation of resolve."""
    await client.set(_BareGet.key, b"x" * 300)
    return Impl("redis-py GET", _BareGet(client), frozenset({"resolve"}), client)


async def cluster(
    server_bin: str | None,
    single: Impl,
    *,
    concurrency: int,
    duration: float,
    scale: float,
    events: bool,
) -> dict[str, Any]:
    """sessionkit's resolve and create on an embedded 3-master cluster, per
    process, with the ratio to the same store on the single server
    (`single`), the two interleaved (`run_interleaved`) so that the ratio
    compares the same moments of the machine."""
    async with EmbeddedCluster(binary=server_bin) as c:
        store = SessionStore.from_url(c.url, pool_size=max(POOL_SIZE, concurrency))
        try:
            impl = make_impls(store.client, "bcl", ["sessionkit"], True, events=events)[0]
            await impl.store.load_scripts()
            results: dict[str, Any] = {"masters": 3}
            for name in SWEPT:
                scenario = scenario_named(name)
                entries = [
                    (i, await scenario.prepare(i, random.Random(1), scale)) for i in (single, impl)
                ]
                one, r = await run_interleaved(
                    scenario,
                    entries,
                    concurrency=concurrency,
                    duration=duration,
                    slices=slices(duration),
                )
                results[name] = {
                    "ops_per_s": r.ops_per_s,
                    "p50_ms": r.p50_ms,
                    "p99_ms": r.p99_ms,
                    "cpu_us_per_op": r.cpu_us_per_op,
                    "errors": r.errors,
                    "single_server_ops_per_s": one.ops_per_s,
                    "ratio": round(r.ops_per_s / one.ops_per_s, 2) if one.ops_per_s else None,
                }
            return results
        finally:
            await store.aclose()


async def processes(
    url: str, n: int, *, concurrency: int, duration: float, scale: float, events: bool
) -> dict[str, Any]:
    """`n` client processes (a multi-worker web app) against one server, all
    timed over the same window: the aggregate ops/s of resolve and create."""
    out: dict[str, Any] = {"processes": n, "concurrency_each": concurrency}
    for name in SWEPT:
        start_at = time.time() + 2.0 + 0.5 * n  # every child has set up by then
        config = json.dumps(
            {
                "url": url,
                "scenario": name,
                "concurrency": concurrency,
                "duration": duration,
                "scale": scale,
                "events": events,
                "start_at": start_at,
            }
        )
        children = [
            await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "bench.sections",
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                env={**os.environ, "BENCH_CHILD": str(i)},
            )
            for i in range(n)
        ]
        replies = await asyncio.gather(*(c.communicate(config.encode()) for c in children))
        each = [json.loads(stdout) for stdout, _ in replies]
        out[name] = {
            "ops_per_s": round(sum(e["ops_per_s"] for e in each), 1),
            "per_process": [e["ops_per_s"] for e in each],
            "errors": sum(e["errors"] for e in each),
        }
    return out


async def _child(config: dict[str, Any]) -> dict[str, Any]:
    store = SessionStore.from_url(config["url"], pool_size=max(POOL_SIZE, config["concurrency"]))
    try:
        tag = f"bp{os.environ.get('BENCH_CHILD', '0')}{os.getpid()}"
        impl = make_impls(store.client, tag, ["sessionkit"], False, events=config["events"])[0]
        await impl.store.load_scripts()
        scenario = scenario_named(config["scenario"])
        state = await scenario.prepare(impl, random.Random(1), config["scale"])
        await asyncio.sleep(max(0.0, config["start_at"] - time.time()))
        r = await run_scenario(
            scenario,
            impl,
            concurrency=config["concurrency"],
            duration=config["duration"],
            max_ops=None,
            scale=config["scale"],
            state=state,
        )
        return {"ops_per_s": r.ops_per_s, "errors": r.errors}
    finally:
        await store.aclose()


if __name__ == "__main__":
    print(json.dumps(asyncio.run(_child(json.loads(sys.stdin.read())))))
