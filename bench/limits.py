"""What the server itself can do, measured in the same run: the ceiling for
sessionkit's own Lua scripts, and server memory per session.

The ceiling is driven from a second process (``python -m bench.limits``, configuration on stdin): a
bare asyncio socket client with hiredis that keeps several connections busy
with deep pipelines of EVALSHA, so the client library is not the limit.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict
from typing import Any

import hiredis
import redis.asyncio as aioredis

from bench.impls import UA, Impl
from sessionkit import SessionStore
from sessionkit import _keys as keys
from sessionkit._model import encode_body
from sessionkit._scripts import Settings, create_call, get_call


def _resolve_commands(settings: Settings, tokens: list[str]) -> list[bytes]:
    """The resolve script's EVALSHA for each token, as the store makes it."""
    out = []
    for t in tokens:
        bucket = keys.token_bucket(t)
        assert bucket is not None
        out.append(get_call(settings, bucket, keys.session_id(t)).payload)
    return out


def _create_commands(settings: Settings, n: int) -> list[bytes]:
    """`n` create-script calls for fresh tokens over 10,000 users, as the
    benchmarked store makes them."""
    out = []
    for i in range(n):
        uid = f"ceiling-{i % 10_000}"
        digest, bucket = keys.user_digest(uid)
        sid = keys.session_id(keys.new_token(bucket))
        body = encode_body(uid, UA, {})
        out.append(create_call(settings, uid, digest, bucket, sid, body, ("member",)).payload)
    return out


async def _drive(
    host: str,
    port: int,
    commands: list[bytes],
    seconds: float,
    connections: int,
    depth: int,
    *,
    again: bool = True,
) -> dict[str, Any]:
    """Keep `connections` connections busy with pipelines of `depth` of
    `commands` for `seconds`; `again`: start over when they run out (a
    resolve reads the same sessions again, the same work), else stop (a
    create sent again finds its token taken: a retry, not a create)."""
    done = 0
    errors = 0
    missing = 0  # resolves that found no session: a ceiling of no work
    deadline = time.perf_counter() + seconds

    async def conn(offset: int) -> None:
        nonlocal done, errors, missing
        reader, writer = await asyncio.open_connection(host, port)
        parser = hiredis.Reader()
        i = offset
        while time.perf_counter() < deadline and (again or i + depth <= len(commands)):
            batch = [commands[(i + j) % len(commands)] for j in range(depth)]
            i += depth * connections
            writer.write(b"".join(batch))
            got = 0
            while got < depth:
                parser.feed(await reader.read(1 << 16))
                while (reply := parser.gets()) is not False:
                    got += 1
                    if isinstance(reply, hiredis.ReplyError):
                        errors += 1
                    elif reply is None:
                        missing += 1
            done += depth
        writer.close()

    start = time.perf_counter()
    await asyncio.gather(*(conn(c * depth) for c in range(connections)))
    elapsed = time.perf_counter() - start
    return {"ops_per_s": round(done / elapsed, 1), "errors": errors, "missing": missing}


def _main() -> None:
    """Entry of the second process: drive the server for each configuration
    given, one after the other; print the results as JSON."""
    out = []
    for cfg in json.loads(sys.stdin.read()):
        if cfg["op"] == "resolve":
            commands = _resolve_commands(Settings(**cfg["settings"]), cfg["tokens"])
        else:
            commands = _create_commands(Settings(**cfg["settings"]), cfg["n"])
        out.append(
            asyncio.run(
                _drive(
                    cfg["host"],
                    cfg["port"],
                    commands,
                    cfg["seconds"],
                    cfg["connections"],
                    cfg["depth"],
                    again=cfg["op"] == "resolve",
                )
            )
        )
    print(json.dumps(out))


async def _flush(client: aioredis.Redis) -> None:
    """Empty the server and free the memory before returning (``SYNC``: a
    server whose flushes are lazy would free it later, under the next
    measurement)."""
    await client.execute_command("FLUSHALL", "SYNC")  # type: ignore[no-untyped-call]


async def measure_ceiling(
    url: str, store: SessionStore, tokens: list[str], seconds: float
) -> dict[str, Any]:
    """Server ceiling for the resolve and create scripts, pipelined (depth 16,
    4 connections) and unpipelined (depth 1, 50 connections). The resolves
    read `tokens`' sessions, the ones the resolve it is compared with reads."""
    await store.load_scripts()
    out: dict[str, Any] = {
        "method": "second process, raw asyncio+hiredis client, EVALSHA",
        "sessions": len(tokens),
    }
    plan = [
        (op, name, conns, depth)
        for op in ("resolve", "create")
        for name, conns, depth in (("pipelined", 4, 16), ("unpipelined", 50, 1))
    ]
    for (op, name, conns, depth), res in zip(
        plan, await _ceilings(url, store, tokens, seconds, plan), strict=True
    ):
        out[f"{op}_{name}"] = {**res, "connections": conns, "depth": depth}
    return out


async def measure_share(
    url: str,
    store: SessionStore,
    tokens: list[str],
    seconds: float,
    ours: Callable[[str], Awaitable[float]],
    rounds: int = 5,
) -> dict[str, Any]:
    """sessionkit's share of the pipelined ceiling, side by side: `rounds`
    times, the ceiling of an operation for `seconds`, then sessionkit's own
    run of it (`ours(op)`, its ops/s) right after; the share is the median
    of the rounds' ratios. Both figures of a ratio come from the same
    moments of a machine that drifts by a quarter over a minute.

    Before the rounds, sessionkit runs the operation once untimed, as the
    ceiling's driver makes its commands before its clock starts: the first
    run over fresh sessions derives each token's call and decodes each
    header anew, and read 2-17 % below the runs after it (three runs of
    three rounds each, the first the lowest in each)."""
    out: dict[str, Any] = {"rounds": rounds}
    for op in ("resolve", "create"):
        await ours(op)
        ceilings, mine = [], []
        for _ in range(rounds):
            [res] = await _ceilings(url, store, tokens, seconds, [(op, "pipelined", 4, 16)])
            ceilings.append(res["ops_per_s"])
            mine.append(await ours(op))
        shares = [m / c for m, c in zip(mine, ceilings, strict=True)]
        out[op] = {
            "ceiling_ops_per_s": statistics.median(ceilings),
            "ops_per_s": statistics.median(mine),
            "share": round(statistics.median(shares), 3),
        }
    return out


async def _ceilings(
    url: str,
    store: SessionStore,
    tokens: list[str],
    seconds: float,
    plan: list[tuple[str, str, int, int]],
) -> list[dict[str, Any]]:
    """Drive the server from the second process for each (operation, name,
    connections, depth) of `plan`, one after the other."""
    host, port = url.removeprefix("redis://").split("/")[0].split(":")
    cfgs = [
        {
            "op": op,
            "settings": asdict(store.settings),
            "tokens": tokens,
            # Creates for the whole run, however fast the server: they
            # are never sent twice (see `_drive`).
            "n": max(20_000, int(120_000 * seconds)),
            "host": host,
            "port": int(port),
            "seconds": seconds,
            "connections": conns,
            "depth": depth,
        }
        for op, _, conns, depth in plan
    ]
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bench.limits", stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    stdout, _ = await proc.communicate(json.dumps(cfgs).encode())
    out: list[dict[str, Any]] = json.loads(stdout)
    return out


async def measure_memory(url: str, sessions: int, impls: list[Impl]) -> dict[str, Any]:
    """Server bytes per session (index entry included) for each implementation,
    each on a freshly flushed server: `sessions` sessions over sessions/10 users."""
    client = aioredis.Redis.from_url(url)
    out: dict[str, Any] = {
        "sessions": sessions,
        "sessions_per_user": 10,
        "user_agent_chars": len(UA),
    }
    try:
        for impl in impls:
            await _flush(client)
            before = (await client.info("memory"))["used_memory"]
            await impl.populate(
                [f"mem-user-{i}" for i in range(sessions // 10)], 10, groups=("member",)
            )
            after = (await client.info("memory"))["used_memory"]
            out[impl.name] = {"bytes_per_session": round((after - before) / sessions, 1)}
        await _flush(client)
    finally:
        await client.aclose()
    return out


if __name__ == "__main__":
    _main()
