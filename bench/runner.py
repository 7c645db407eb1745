"""Runs one scenario on one implementation: N concurrent tasks, each issuing
operations back to back, every latency recorded in an HDR histogram."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from hdrh.histogram import HdrHistogram
from redis.asyncio.cluster import RedisCluster

from bench.impls import Impl
from bench.scenarios import Exhausted, Scenario


@dataclass
class Result:
    scenario: str
    impl: str
    ops: int
    seconds: float
    ops_per_s: float
    p50_ms: float
    p99_ms: float
    p999_ms: float
    max_ms: float
    errors: int
    cpu_us_per_op: float
    first_error: str | None = None
    setup_s: float = 0.0
    concurrency: int = 0
    #: Server time per operation: INFO commandstats' usec summed over every
    #: command (and every node), its change over the timed window / ops.
    server_us_per_op: float | None = None


async def server_usec(client: Any) -> float | None:
    """Microseconds the server(s) spent in commands so far (None if unknown)."""
    try:
        if isinstance(client, RedisCluster):
            info = await client.info("commandstats", target_nodes=RedisCluster.PRIMARIES)
        else:
            info = await client.info("commandstats")
    except Exception:
        return None
    # One server: {"cmdstat_get": {...}}; a cluster: {node: {"cmdstat_get": {...}}}.
    single = any(str(k).startswith("cmdstat_") for k in info)
    total = 0.0
    for node in [info] if single else info.values():
        total += sum(float(v["usec"]) for k, v in node.items() if str(k).startswith("cmdstat_"))
    return total


async def run_scenario(
    scenario: Scenario,
    impl: Impl,
    *,
    concurrency: int,
    duration: float,
    max_ops: int | None,
    scale: float,
    seed: int = 1,
    tick: Callable[[float], None] | None = None,
    state: Any = None,
) -> Result:
    """Prepare the scenario (not timed) unless `state` is what an earlier
    run prepared, then drive it for `duration` seconds or `max_ops`
    operations, whichever ends first."""
    if scenario.max_concurrency:
        concurrency = min(concurrency, scenario.max_concurrency)
    rng = random.Random(seed)
    prep0 = time.perf_counter()
    if state is None:
        state = await scenario.prepare(impl, rng, scale)
    setup_s = time.perf_counter() - prep0
    hist = HdrHistogram(1, 60_000_000, 3)  # microseconds, 1 µs .. 60 s
    done = 0
    errors = 0
    first_error: str | None = None
    stop = False
    budget = max_ops if max_ops is not None else 1 << 62

    async def worker(wid: int) -> None:
        nonlocal done, errors, first_error, stop
        wrng = random.Random(seed * 1000 + wid)
        perf = time.perf_counter
        while not stop:
            if done >= budget:
                stop = True
                return
            done += 1
            t0 = perf()
            try:
                await scenario.step(impl, state, wrng)
            except Exhausted:
                done -= 1
                stop = True
                return
            except Exception as exc:  # counted and reported, never hidden
                errors += 1
                if first_error is None:
                    first_error = f"{type(exc).__name__}: {exc}"[:300]
            hist.record_value(max(1, int((perf() - t0) * 1e6)))

    async def timer() -> None:
        nonlocal stop
        start = time.perf_counter()
        while not stop:
            await asyncio.sleep(0.1)
            elapsed = time.perf_counter() - start
            if tick:
                tick(min(elapsed / duration, 1.0))
            if elapsed >= duration:
                stop = True

    usec0 = await server_usec(impl.client)
    cpu0, t0 = time.process_time(), time.perf_counter()
    clock = asyncio.create_task(timer())
    await asyncio.gather(*(worker(i) for i in range(concurrency)))
    seconds = time.perf_counter() - t0
    cpu = time.process_time() - cpu0
    stop = True
    clock.cancel()
    usec1 = await server_usec(impl.client)
    n = hist.get_total_count()
    return Result(
        scenario=scenario.name,
        impl=impl.name,
        ops=n,
        seconds=round(seconds, 3),
        ops_per_s=round(n / seconds, 1) if seconds else 0.0,
        p50_ms=hist.get_value_at_percentile(50) / 1000,
        p99_ms=hist.get_value_at_percentile(99) / 1000,
        p999_ms=hist.get_value_at_percentile(99.9) / 1000,
        max_ms=hist.get_max_value() / 1000,
        errors=errors,
        cpu_us_per_op=round(cpu / n * 1e6, 1) if n else 0.0,
        first_error=first_error,
        setup_s=round(setup_s, 2),
        concurrency=concurrency,
        server_us_per_op=(
            round((usec1 - usec0) / n, 1) if n and usec0 is not None and usec1 is not None else None
        ),
    )
