"""Results out: a table for people, JSON for checks, Markdown and a plot."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from bench import worst_case
from bench.runner import Result

CEILING_OPS = {"resolve": "resolve_unpipelined", "create": "create_unpipelined"}


def ratios(results: list[Result], ceiling: dict[str, Any]) -> list[dict[str, Any]]:
    """sessionkit / naive, sessionkit / peer, and sessionkit's share of the ceiling."""
    by = {(r.scenario, r.impl): r for r in results}
    out: list[dict[str, Any]] = []
    for (scenario, impl), r in by.items():
        if impl != "sessionkit" or not r.ops_per_s:
            continue
        for vs in ("naive", "peer"):
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
    return out


def build(
    conditions: dict[str, Any],
    results: list[Result],
    ceiling: dict[str, Any],
    memory: dict[str, Any],
    worst_case: dict[str, Any] | None = None,
) -> dict[str, Any]:
    return {
        "conditions": conditions,
        "results": [asdict(r) for r in results],
        "ratios": ratios(results, ceiling),
        "ceiling": ceiling,
        "memory": memory,
        "worst_case": worst_case or {},
    }


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
        "× naive",
        "× peer",
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
            f"{rat[(r['scenario'], 'naive')]:.2f}×"
            if sk and (r["scenario"], "naive") in rat
            else "",
            f"{rat[(r['scenario'], 'peer')]:.2f}×" if sk and (r["scenario"], "peer") in rat else "",
        )
    console.print(table)
    ceiling = doc["ceiling"]
    for key, val in ceiling.items():
        if isinstance(val, dict):
            console.print(
                f"server ceiling {key}: {val['ops_per_s']:,.0f} ops/s "
                f"({val['connections']} connections, depth {val['depth']})"
            )
    for r in doc["ratios"]:
        if r["vs"] == "ceiling":
            console.print(
                f"sessionkit {r['scenario']}: {r['ratio']:.0%} of the {r['ceiling']} ceiling"
            )
    for name, val in doc["memory"].items():
        if isinstance(val, dict):
            console.print(f"memory {name}: {val['bytes_per_session']:.0f} bytes per session")
    if doc.get("worst_case"):
        console.print("worst case (server time per call; another user's resolve meanwhile):")
        for line in worst_case.lines(doc["worst_case"]):
            console.print(line)


def markdown(doc: dict[str, Any]) -> str:
    c = doc["conditions"]
    lines = [
        "# sessionkit benchmark",
        "",
        f"- machine: {c['cpu_count']} CPUs, {c['platform']}",
        f"- Python {c['python']}, redis-py {c['redis_py']}, hiredis {c['hiredis']}, "
        f"loop {c['loop']}",
        f"- server: {c['server']}",
        f"- concurrency {c['concurrency']}, {c['duration_s']} s per run"
        + (f", at most {c['max_ops']} ops" if c.get("max_ops") else ""),
        f"- commit {c['git_commit']}, command `{c['command']}`",
        "",
        "| scenario | impl | ops/s | p50 ms | p99 ms | p99.9 ms | max ms | errors | CPU µs/op |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in doc["results"]:
        lines.append(
            f"| {r['scenario']} | {r['impl']} | {r['ops_per_s']:,.0f} | {r['p50_ms']:.3f} | "
            f"{r['p99_ms']:.3f} | {r['p999_ms']:.3f} | {r['max_ms']:.1f} | {r['errors']} | "
            f"{r['cpu_us_per_op']:.0f} |"
        )
    lines += ["", "| scenario | vs | ratio |", "| --- | --- | ---: |"]
    for r in doc["ratios"]:
        vs = r["vs"] + (f" ({r['ceiling']})" if r["vs"] == "ceiling" else "")
        lines.append(f"| {r['scenario']} | {vs} | {r['ratio']:.2f} |")
    lines += ["", "Server ceiling (second process, raw pipelined client):", ""]
    for key, val in doc["ceiling"].items():
        if isinstance(val, dict):
            lines.append(
                f"- {key}: {val['ops_per_s']:,.0f} ops/s "
                f"({val['connections']} connections, depth {val['depth']})"
            )
    lines += ["", "Server memory:", ""]
    for name, val in doc["memory"].items():
        if isinstance(val, dict):
            lines.append(f"- {name}: {val['bytes_per_session']:.0f} bytes per session")
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
        f"sessionkit vs naive vs peer — concurrency {doc['conditions']['concurrency']}, "
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
