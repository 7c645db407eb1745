"""Runs one scenario on one implementation: N concurrent tasks, each issuing
operations back to back, every latency recorded in an HDR histogram."""

from __future__ import annotations

import asyncio
import random
import time
from array import array
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
    #: Server time per operation: the server's main-thread CPU time (INFO
    #: cpu, user and system, summed over a cluster's primaries), its change
    #: over the timed window / ops. Not INFO commandstats: it counts each
    #: command a script (or MULTI) runs on its own as well as inside the
    #: script's time, so a script's figure would hold its commands twice.
    server_us_per_op: float | None = None


async def server_usec(client: Any) -> float | None:
    """Microseconds of CPU the server(s) main thread used so far (None if
    unknown)."""
    try:
        if isinstance(client, RedisCluster):
            info = await client.info("cpu", target_nodes=RedisCluster.PRIMARIES)
        else:
            info = await client.info("cpu")
    except Exception:
        return None
    # One server: {"used_cpu_user": ...}; a cluster: {node: {"used_cpu_user": ...}}.
    nodes = [info] if "used_cpu_user" in info else list(info.values())
    total = 0.0
    for node in nodes:
        user = node.get("used_cpu_user_main_thread", node["used_cpu_user"])
        system = node.get("used_cpu_sys_main_thread", node["used_cpu_sys"])
        total += (float(user) + float(system)) * 1e6
    return total


@dataclass
class _Window:
    """What one timed window measured, before it is summed up."""

    hist: HdrHistogram
    #: The tasks it ran (the scenario's `max_concurrency` applied).
    concurrency: int
    seconds: float
    cpu: float
    errors: int
    first_error: str | None
    server_usec: float | None

    def add(self, other: _Window) -> _Window:
        self.hist.add(other.hist)
        self.seconds += other.seconds
        self.cpu += other.cpu
        self.errors += other.errors
        self.first_error = self.first_error or other.first_error
        if self.server_usec is None or other.server_usec is None:
            self.server_usec = None
        else:
            self.server_usec += other.server_usec
        return self


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
    prep0 = time.perf_counter()
    if state is None:
        state = await scenario.prepare(impl, random.Random(seed), scale)
    setup_s = time.perf_counter() - prep0
    window = await _drive(
        scenario,
        impl,
        state,
        concurrency=concurrency,
        duration=duration,
        max_ops=max_ops,
        seed=seed,
        tick=tick,
    )
    return _result(scenario, impl, window, setup_s)


async def run_interleaved(
    scenario: Scenario,
    entries: list[tuple[Impl, Any]],
    *,
    concurrency: int,
    duration: float,
    slices: int,
    seed: int = 1,
) -> list[Result]:
    """Each implementation (with the state its `prepare` made) driven for
    `duration` seconds in all, in `slices` turns whose order rotates, so
    that every one of them sees the same moments of the machine: a shared
    machine drifts by a quarter over a minute, and runs back to back would
    compare moments, not implementations. One result per implementation,
    its turns summed, in the order given."""
    windows: list[_Window | None] = [None] * len(entries)
    for k in range(slices):
        for j in range(len(entries)):
            i = (j + k) % len(entries)
            impl, state = entries[i]
            w = await _drive(
                scenario,
                impl,
                state,
                concurrency=concurrency,
                duration=duration / slices,
                max_ops=None,
                seed=seed + k,
                tick=None,
            )
            before = windows[i]
            windows[i] = w if before is None else before.add(w)
    return [
        _result(scenario, impl, w, 0.0)
        for (impl, _), w in zip(entries, windows, strict=True)
        if w is not None
    ]


async def _drive(
    scenario: Scenario,
    impl: Impl,
    state: Any,
    *,
    concurrency: int,
    duration: float,
    max_ops: int | None,
    seed: int,
    tick: Callable[[float], None] | None,
) -> _Window:
    """`concurrency` tasks (at most the scenario's `max_concurrency`)
    issuing the scenario's step back to back for `duration` seconds or
    `max_ops` operations, whichever ends first."""
    if scenario.max_concurrency:
        concurrency = min(concurrency, scenario.max_concurrency)
    # Latencies go into a flat array while the clock runs and into the
    # histogram after it stops: recording into the histogram costs a
    # microsecond of the client's CPU per operation, the array a tenth of it.
    latencies = array("d")
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
            latencies.append(perf() - t0)

    async def timer() -> None:
        nonlocal stop
        start = time.perf_counter()
        while not stop:
            elapsed = time.perf_counter() - start
            await asyncio.sleep(min(0.1, max(0.0, duration - elapsed)))
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
    hist = HdrHistogram(1, 60_000_000, 3)  # microseconds, 1 µs .. 60 s
    for seconds_taken in latencies:
        hist.record_value(max(1, int(seconds_taken * 1e6)))
    return _Window(
        hist,
        concurrency,
        seconds,
        cpu,
        errors,
        first_error,
        None if usec0 is None or usec1 is None else usec1 - usec0,
    )


def _result(scenario: Scenario, impl: Impl, w: _Window, setup_s: float) -> Result:
    hist = w.hist
    n = hist.get_total_count()
    return Result(
        scenario=scenario.name,
        impl=impl.name,
        ops=n,
        seconds=round(w.seconds, 3),
        ops_per_s=round(n / w.seconds, 1) if w.seconds else 0.0,
        p50_ms=hist.get_value_at_percentile(50) / 1000,
        p99_ms=hist.get_value_at_percentile(99) / 1000,
        p999_ms=hist.get_value_at_percentile(99.9) / 1000,
        max_ms=hist.get_max_value() / 1000,
        errors=w.errors,
        cpu_us_per_op=round(w.cpu / n * 1e6, 1) if n else 0.0,
        first_error=w.first_error,
        setup_s=round(setup_s, 2),
        concurrency=w.concurrency,
        server_us_per_op=(round(w.server_usec / n, 1) if n and w.server_usec is not None else None),
    )
