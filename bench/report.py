"""Results out: a table for people, JSON for checks, Markdown and a plot."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from bench import floor, nearcache, worst_case
from bench.impls import PEERS
from bench.runner import Result

CEILING_OPS = {"resolve": "resolve_unpipelined", "create": "create_unpipelined"}


PEER_NAMES = tuple(PEERS)


def ratios(results: list[Result], ceiling: dict[str, Any]) -> list[dict[str, Any]]:
    """sessionkit / naive, sessionkit / each peer, and sessionkit's share of the ceiling."""
    by = {(r.scenario, r.impl): r for r in results}
    out: list[dict[str, Any]] = []
    for (scenario, impl), r in by.items():
        if impl != "sessionkit" or not r.ops_per_s:
            continue
        for vs in ("naive", *PEER_NAMES):
            other = by.get((scenario, vs))
            if other and other.ops_per_s:
                out.append(
                    {
                        "scenario": scenario,
                        "vs": vs,
                        "ratio": round(r.ops_per_s / other.ops_per_s, 2),
                    }
                )
        for op, key in CEILING_OPS.items():
            if scenario == op and key in ceiling:
                for kind in ("unpipelined", "pipelined"):
                    c = ceiling.get(f"{op}_{kind}", {}).get("ops_per_s")
                    if c:
                        out.append(
                            {
                                "scenario": scenario,
                                "vs": "ceiling",
                                "ceiling": kind,
                                "ratio": round(r.ops_per_s / c, 3),
                            }
                        )
    for op, side in (ceiling.get("side_by_side") or {}).items():
        if isinstance(side, dict):
            out.append(
                {
                    "scenario": op,
                    "vs": "ceiling",
                    "ceiling": "pipelined, side by side",
                    "ratio": side["share"],
                }
            )
    return out


def build(
    conditions: dict[str, Any],
    results: list[Result],
    ceiling: dict[str, Any],
    memory: dict[str, Any],
    worst_case: dict[str, Any] | None = None,
    *,
    sweep: list[dict[str, Any]] | None = None,
    cluster: dict[str, Any] | None = None,
    processes: dict[str, Any] | None = None,
    near_cache: dict[str, Any] | None = None,
) -> dict[str, Any]:
    if processes and ceiling:
        for op in ("resolve", "create"):
            c = ceiling.get(f"{op}_pipelined", {}).get("ops_per_s")
            if op in processes and c:
                processes[op]["share_of_ceiling"] = round(processes[op]["ops_per_s"] / c, 3)
    return {
        "conditions": conditions,
        "results": [asdict(r) for r in results],
        "ratios": ratios(results, ceiling),
        "ceiling": ceiling,
        "memory": memory,
        "worst_case": worst_case or {},
        "sweep": sweep or [],
        "cluster": cluster or {},
        "processes": processes or {},
        "near_cache": near_cache or {},
    }


def _min_peer(rat: dict[tuple[str, str], float], scenario: str) -> str:
    """sessionkit's ratio to its fastest peer in a scenario, and which."""
    found = [(rat[(scenario, p)], p) for p in PEER_NAMES if (scenario, p) in rat]
    if not found:
        return ""
    ratio, peer = min(found)
    return f"{ratio:.2f}× {peer}"


def sweep_lines(doc: dict[str, Any]) -> list[str]:
    """ops/s and p50 per implementation at each concurrency, one line per
    scenario and implementation."""
    rows = doc.get("sweep") or []
    levels = sorted({r["concurrency"] for r in rows})
    out = []
    for scenario in dict.fromkeys(r["scenario"] for r in rows):
        for impl in dict.fromkeys(r["impl"] for r in rows if r["scenario"] == scenario):
            cells = []
            for c in levels:
                r = next(
                    (
                        x
                        for x in rows
                        if (x["scenario"], x["impl"], x["concurrency"]) == (scenario, impl, c)
                    ),
                    None,
                )
                cells.append(
                    f"c={c}: {r['ops_per_s']:,.0f}/s p50 {r['p50_ms']:.3f} ms" if r else f"c={c}: –"
                )
            out.append(f"- {scenario} · {impl}: " + "; ".join(cells))
    bare = next((r for r in rows if r["impl"] == "redis-py GET"), None)
    ours = next(
        (
            r
            for r in rows
            if (r["scenario"], r["impl"], r["concurrency"]) == ("resolve", "sessionkit", 1)
        ),
        None,
    )
    if bare and ours and bare["p50_ms"]:
        out.append(
            f"- c=1: sessionkit's resolve p50 is {ours['p50_ms'] / bare['p50_ms']:.2f}× "
            f"a bare redis-py GET's ({ours['p50_ms']:.3f} vs {bare['p50_ms']:.3f} ms)"
        )
    return out


def cluster_lines(doc: dict[str, Any]) -> list[str]:
    c = doc.get("cluster") or {}
    out = []
    for op in ("resolve", "create"):
        if op in c:
            r = c[op]
            ratio = f" = {r['ratio']:.0%} of one server" if r.get("ratio") else ""
            out.append(
                f"- {op} on a {c['masters']}-master cluster: {r['ops_per_s']:,.0f} ops/s per "
                f"process (one server: {r['single_server_ops_per_s'] or 0:,.0f}){ratio}, "
                f"p50 {r['p50_ms']:.3f} ms, {r['errors']} errors"
            )
    return out


def process_lines(doc: dict[str, Any]) -> list[str]:
    p = doc.get("processes") or {}
    out = []
    for op in ("resolve", "create"):
        if op in p:
            r = p[op]
            share = (
                f" = {r['share_of_ceiling']:.0%} of the pipelined ceiling"
                if "share_of_ceiling" in r
                else ""
            )
            out.append(
                f"- {op} from {p['processes']} processes (c={p['concurrency_each']} each): "
                f"{r['ops_per_s']:,.0f} ops/s in all{share}, {r['errors']} errors"
            )
    return out


def print_table(doc: dict[str, Any], console: Console) -> None:
    table = Table(title="sessionkit benchmark", show_lines=False)
    for col in (
        "scenario",
        "impl",
        "ops/s",
        "p50 ms",
        "p99 ms",
        "p99.9 ms",
        "max ms",
        "errors",
        "CPU µs/op",
        "server µs/op",
        "× naive",
        "× slowest-to-beat peer",
    ):
        table.add_column(col, justify="left" if col in ("scenario", "impl") else "right")
    rat = {(r["scenario"], r["vs"]): r["ratio"] for r in doc["ratios"] if r["vs"] != "ceiling"}
    for r in doc["results"]:
        sk = r["impl"] == "sessionkit"
        table.add_row(
            escape(r["scenario"]),
            r["impl"],
            f"{r['ops_per_s']:,.0f}",
            f"{r['p50_ms']:.3f}",
            f"{r['p99_ms']:.3f}",
            f"{r['p999_ms']:.3f}",
            f"{r['max_ms']:.1f}",
            str(r["errors"]),
            f"{r['cpu_us_per_op']:.0f}",
            _server_us(r),
            f"{rat[(r['scenario'], 'naive')]:.2f}×"
            if sk and (r["scenario"], "naive") in rat
            else "",
            _min_peer(rat, r["scenario"]) if sk else "",
        )
    console.print(table)
    for title, lines in (
        ("concurrency sweep:", sweep_lines(doc)),
        ("cluster:", cluster_lines(doc)),
        ("several client processes:", process_lines(doc)),
        ("near cache:", nearcache.lines(doc.get("near_cache") or {})),
    ):
        if lines:
            console.print(title)
            for line in lines:
                console.print(escape(line))
    ceiling = doc["ceiling"]
    for key, val in ceiling.items():
        if isinstance(val, dict) and "depth" in val:
            console.print(
                f"server ceiling {key}: {val['ops_per_s']:,.0f} ops/s "
                f"({val['connections']} connections, depth {val['depth']})"
            )
    for r in doc["ratios"]:
        if r["vs"] == "ceiling":
            console.print(
                f"sessionkit {r['scenario']}: {r['ratio']:.0%} of the {r['ceiling']} ceiling"
            )
    for line in floor.all_lines(ceiling):
        console.print(line)
    for name, val in doc["memory"].items():
        if isinstance(val, dict):
            console.print(f"memory {name}: {val['bytes_per_session']:.0f} bytes per session")
    if doc.get("worst_case"):
        console.print("worst case (server time per call; another user's resolve meanwhile):")
        for line in worst_case.lines(doc["worst_case"]):
            console.print(line)


def _server_us(r: dict[str, Any]) -> str:
    v = r.get("server_us_per_op")
    return "" if v is None else f"{v:.1f}"


def markdown(doc: dict[str, Any]) -> str:
    c = doc["conditions"]
    lines = [
        "# sessionkit benchmark",
        "",
        f"- machine: {c['cpu_count']} CPUs, {c['platform']}"
        + (
            f"; CPU steal during the run: {c['cpu_steal_percent']:.1f}% (time the host "
            "gave other guests: the higher, the less the absolute figures mean)"
            if c.get("cpu_steal_percent") is not None
            else ""
        ),
        f"- Python {c['python']}, redis-py {c['redis_py']}, hiredis {c['hiredis']}, "
        f"loop {c['loop']}",
        f"- server: {c['server']}",
        f"- concurrency {c['concurrency']}, {c['duration_s']} s per run"
        + (f", at most {c['max_ops']} ops" if c.get("max_ops") else ""),
        f"- commit {c['git_commit']}, command `{c['command']}`",
        "",
        "| scenario | impl | ops/s | p50 ms | p99 ms | p99.9 ms | max ms | errors | CPU µs/op "
        "| server µs/op |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in doc["results"]:
        lines.append(
            f"| {r['scenario']} | {r['impl']} | {r['ops_per_s']:,.0f} | {r['p50_ms']:.3f} | "
            f"{r['p99_ms']:.3f} | {r['p999_ms']:.3f} | {r['max_ms']:.1f} | {r['errors']} | "
            f"{r['cpu_us_per_op']:.0f} | {_server_us(r)} |"
        )
    lines += ["", "| scenario | vs | ratio |", "| --- | --- | ---: |"]
    for r in doc["ratios"]:
        vs = r["vs"] + (f" ({r['ceiling']})" if r["vs"] == "ceiling" else "")
        lines.append(f"| {r['scenario']} | {vs} | {r['ratio']:.2f} |")
    lines += ["", "Server ceiling (second process, raw pipelined client):", ""]
    for key, val in doc["ceiling"].items():
        if isinstance(val, dict) and "depth" in val:
            lines.append(
                f"- {key}: {val['ops_per_s']:,.0f} ops/s "
                f"({val['connections']} connections, depth {val['depth']})"
            )
    floor_lines = floor.all_lines(doc["ceiling"])
    if floor_lines:
        lines += ["", "Each hot script against its commands alone (server time, EVALSHA):", ""]
        lines += [f"- {line}" for line in floor_lines]
    lines += ["", "Server memory:", ""]
    for name, val in doc["memory"].items():
        if isinstance(val, dict):
            lines.append(f"- {name}: {val['bytes_per_session']:.0f} bytes per session")
    for title, extra in (
        ("Concurrency sweep:", sweep_lines(doc)),
        ("Cluster:", cluster_lines(doc)),
        ("Several client processes:", process_lines(doc)),
        ("Near cache:", nearcache.lines(doc.get("near_cache") or {})),
    ):
        if extra:
            lines += ["", title, "", *extra]
    if doc.get("worst_case"):
        lines += ["", "Worst case (one user at the cap, fresh server):", ""]
        lines += worst_case.lines(doc["worst_case"])
    return "\n".join(lines) + "\n"


def plot(doc: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scenarios = list(dict.fromkeys(r["scenario"] for r in doc["results"]))
    impls = list(dict.fromkeys(r["impl"] for r in doc["results"]))
    by = {(r["scenario"], r["impl"]): r for r in doc["results"]}
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(13, 8.5), sharex=True)
    width = 0.8 / max(1, len(impls))
    for i, impl in enumerate(impls):
        xs = [j + i * width for j, s in enumerate(scenarios) if (s, impl) in by]
        ax1.bar(
            xs,
            [by[(s, impl)]["ops_per_s"] for s in scenarios if (s, impl) in by],
            width,
            label=impl,
        )
        ax2.bar(
            xs, [by[(s, impl)]["p99_ms"] for s in scenarios if (s, impl) in by], width, label=impl
        )
    ax1.set_ylabel("ops/s (log)")
    ax1.set_yscale("log")
    ax1.legend(loc="upper right", fontsize=8)
    ax1.set_title(
        f"sessionkit vs naive vs peers — concurrency {doc['conditions']['concurrency']}, "
        f"{doc['conditions']['cpu_count']} CPUs, {doc['conditions']['server_short']}"
    )
    ax2.set_ylabel("p99 latency, ms (log)")
    ax2.set_yscale("log")
    ax2.set_xticks([j + width * (len(impls) - 1) / 2 for j in range(len(scenarios))])
    ax2.set_xticklabels(scenarios, rotation=30, ha="right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write(doc: dict[str, Any], folder: Path, json_path: Path | None) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    text = json.dumps(doc, indent=2)
    (folder / "latest.json").write_text(text)
    (folder / "latest.md").write_text(markdown(doc))
    plot(doc, folder / "latest.png")
    if json_path:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(text)
