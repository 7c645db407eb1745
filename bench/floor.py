"""Each hot script's server time against the same Redis commands alone.

A script's server time is its commands plus its own logic (and the
server's work to call it); what the logic adds is the part a change to the
script can remove. `measure_floor` replays the resolve and create calls the
store makes, and the same calls to a script that runs only their commands
(``bench/floors/*.lua``), alternately, pipelined, on one connection, and
reads EVALSHA's time per call from INFO commandstats (nothing else runs
meanwhile, and EVALSHA's time holds the commands it runs). The ratio is
the figure to watch: the absolute times move with the host, and with what
the server holds (``python -m bench`` measures both on a fresh server and
on its own after the other sections: a million keys more make every
command dearer, the script's and its floor's alike).
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis

from bench.limits import _create_commands, _resolve_commands
from bench.worst_case import _server_us
from sessionkit import _resp
from sessionkit._scripts import Settings

_FLOORS = Path(__file__).parent / "floors"

#: Calls sent at once.
_DEPTH = 100


async def _replay(client: aioredis.Redis, payloads: list[bytes], sha: str | None) -> None:
    """Send `payloads`, or the same calls to the script `sha`, pipelined. A
    call the server refuses is an error: the figure would be of something
    else."""
    for start in range(0, len(payloads), _DEPTH):
        pipe = client.pipeline(transaction=False)
        for payload in payloads[start : start + _DEPTH]:
            parts = _resp.unpack(payload)
            if sha is not None:
                parts[1] = sha.encode()
            pipe.execute_command(*parts)
        await pipe.execute()  # raises the first refusal


async def _usec_per_call(client: aioredis.Redis, payloads: list[bytes], sha: str | None) -> float:
    """Server µs per EVALSHA of `payloads`, or of the same calls to `sha`."""
    return await _server_us(client, lambda: _replay(client, payloads, sha))


async def _create_round(
    client: aioredis.Redis, settings: Settings, calls: int, sha: str | None
) -> float:
    """Server µs per create of `calls` users' second session, made by the
    store's script or by `sha`, from the same state every round: each user
    first gets one session (outside the measured window), and every key
    both wrote is deleted after. Rounds that kept their keys measured a
    server growing under them (20,000 keys and ten sessions per user more
    by the last round, each round dearer than the one before)."""
    first = _create_commands(settings, calls)
    second = _create_commands(settings, calls)
    await _replay(client, first, None)
    try:
        return await _usec_per_call(client, second, sha)
    finally:
        pipe = client.pipeline(transaction=False)
        for payload in first + second:
            pipe.unlink(*_resp.unpack(payload)[3:7])  # the session, its user's three keys
        await pipe.execute()


async def measure_floor(
    url: str, settings: Settings, tokens: list[str], *, rounds: int = 5, calls: int = 2000
) -> dict[str, Any]:
    """For resolve and create: server µs per call of the script and of its
    commands alone (the median of `rounds` alternations of `calls` calls
    each), and their ratio. `tokens` are live sessions to resolve; a create
    is a user's second session, every round from the same state."""
    client = aioredis.Redis.from_url(url)
    out: dict[str, Any] = {"method": "EVALSHA usec per call, INFO commandstats, pipelined"}
    try:
        for op in ("resolve", "create"):
            floor_sha = await client.script_load((_FLOORS / f"{op}.lua").read_text("utf-8"))
            reads = _resolve_commands(settings, tokens[:calls]) if op == "resolve" else None
            mine: list[float] = []
            floor: list[float] = []
            pair: list[tuple[str | None, list[float]]] = [(None, mine), (floor_sha, floor)]
            for i in range(rounds):
                for sha, into in pair if i % 2 == 0 else pair[::-1]:  # each goes first in turn
                    if reads is None:
                        into.append(await _create_round(client, settings, calls, sha))
                    else:
                        into.append(await _usec_per_call(client, reads, sha))
            script_us, floor_us = statistics.median(mine), statistics.median(floor)
            out[op] = {
                "script_us": round(script_us, 2),
                "floor_us": round(floor_us, 2),
                "ratio": round(script_us / floor_us, 2),
            }
    finally:
        await client.aclose()
    return out


def lines(floor: dict[str, Any], where: str = "") -> list[str]:
    """The report's lines for `measure_floor`'s figures, `where` after each
    op's name (which server they were measured on)."""
    return [
        f"{op}{where}: {v['script_us']:.1f} µs of server time per call, its commands alone "
        f"{v['floor_us']:.1f} µs ({v['ratio']:.2f}×)"
        for op, v in floor.items()
        if isinstance(v, dict)
    ]


def all_lines(ceiling: dict[str, Any]) -> list[str]:
    """The lines for both measurements: on a fresh private server (the
    scripts' own cost) and on the run's server after its sections."""
    out = []
    for key, where in (("floor", "fresh server"), ("floor_loaded", "the run's server")):
        measured = ceiling.get(key) or {}
        if measured:
            out += lines(measured, f" ({where}, holding {measured.get('keys', 0):,} keys)")
    return out
