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
from bench.runner import run_scenario
from bench.scenarios import SCENARIOS, Scenario
from sessionkit import SessionStore
from sessionkit.defaults import POOL_SIZE
from sessionkit.server import EmbeddedCluster

#: The concurrencies of the sweep, and what it sweeps.
SWEEP = (1, 10, 50, 200)
SWEPT = ("resolve", "create")


def _scenario(name: str) -> Scenario:
    return next(s for s in SCENARIOS if s.name == name)


async def sweep(
    impls: list[Impl],
    *,
    duration: float,
    scale: float,
    levels: tuple[int, ...] = SWEEP,
    tick: Callable[[], None] | None = None,
) -> list[dict[str, Any]]:
    """resolve and create at each concurrency for every implementation, the
    implementations back to back at each level (so that they share the
    machine's moment), each one's setup made once per scenario; plus, at
    c=1, a bare redis-py ``GET`` as the round trip's yardstick."""
    out: list[dict[str, Any]] = []
    for name in SWEPT:
        scenario = _scenario(name)
        states: dict[str, Any] = {}
        for impl in impls:
            if scenario.needs <= impl.ops:
                states[impl.name] = await scenario.prepare(impl, random.Random(1), scale)
        for c in levels:
            if name == "resolve" and c == 1 and impls:
                out.append(await _bare_get(impls[0].client, duration))
            for impl in impls:
                if impl.name not in states:
                    continue
                r = await run_scenario(
                    scenario,
                    impl,
                    concurrency=c,
                    duration=duration,
                    max_ops=None,
                    scale=scale,
                    state=states[impl.name],
                )
                out.append(asdict(r))
                if tick:
                    tick()
    return out


async def _bare_get(client: Any, duration: float) -> dict[str, Any]:
    """One task awaiting redis-py ``GET`` of one key, for `duration` seconds."""
    from hdrh.histogram import HdrHistogram

    await client.set("bench:bare-get", b"x" * 300)
    hist = HdrHistogram(1, 60_000_000, 3)
    perf = time.perf_counter
    end = perf() + duration
    while (t0 := perf()) < end:
        await client.get("bench:bare-get")
        hist.record_value(max(1, int((perf() - t0) * 1e6)))
    n = hist.get_total_count()
    return {
        "scenario": "resolve",
        "impl": "redis-py GET",
        "concurrency": 1,
        "ops": n,
        "ops_per_s": round(n / duration, 1),
        "p50_ms": hist.get_value_at_percentile(50) / 1000,
        "p99_ms": hist.get_value_at_percentile(99) / 1000,
        "p999_ms": hist.get_value_at_percentile(99.9) / 1000,
        "errors": 0,
        "server_us_per_op": None,
    }


async def cluster(
    server_bin: str | None,
    single: dict[str, float],
    *,
    concurrency: int,
    duration: float,
    scale: float,
    events: bool,
) -> dict[str, Any]:
    """sessionkit's resolve and create on an embedded 3-master cluster, per
    process, with the ratio to the single-server figures of the same run."""
    async with EmbeddedCluster(binary=server_bin) as c:
        store = SessionStore.from_url(c.url, pool_size=max(POOL_SIZE, concurrency))
        try:
            impl = make_impls(store.client, "bcl", ["sessionkit"], True, events=events)[0]
            await impl.store.load_scripts()
            results: dict[str, Any] = {"masters": 3}
            for name in SWEPT:
                r = await run_scenario(
                    _scenario(name),
                    impl,
                    concurrency=concurrency,
                    duration=duration,
                    max_ops=None,
                    scale=scale,
                )
                one = single.get(name)
                results[name] = {
                    "ops_per_s": r.ops_per_s,
                    "p50_ms": r.p50_ms,
                    "p99_ms": r.p99_ms,
                    "cpu_us_per_op": r.cpu_us_per_op,
                    "errors": r.errors,
                    "single_server_ops_per_s": one,
                    "ratio": round(r.ops_per_s / one, 2) if one else None,
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
        scenario = _scenario(config["scenario"])
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
