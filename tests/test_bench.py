"""The benchmark harness: a quick run produces well-formed results for every
scenario and implementation, and the naive yardstick keeps the store's
contract, so that its numbers compare like with like."""

from __future__ import annotations

import asyncio
import itertools
import json
import random
import subprocess
import sys
from pathlib import Path
from typing import Any, cast

import pytest

from bench.impls import PEER_OPS, PEERS, Impl, make_impls
from bench.naive import NaiveStore
from bench.runner import run_interleaved
from bench.scenarios import SCENARIOS, Scenario
from tests.conftest import Backend
from tests.test_store_operations import StoreContract

ROOT = Path(__file__).parent.parent
RESULT_KEYS = {"scenario", "impl", "ops_per_s", "p50_ms", "p99_ms", "p999_ms", "errors"}


# The naive store runs on the single real server only (it is not cluster-safe).
@pytest.mark.backends("server")
class TestNaiveStore(StoreContract):
    """The contract the naive yardstick is held to, as sessionkit's store is."""

    @pytest.fixture
    def store(self, backend: Backend, prefix: str) -> NaiveStore:
        return NaiveStore(backend.client, prefix=prefix)  # type: ignore[arg-type]


@pytest.mark.one_server  # the harness: the second server adds nothing
@pytest.mark.server
# The whole quick harness (70 s here) in one test: bounded by its own
# subprocess timeout, not by the suite's 120 s per test, which a slow
# minute on a shared machine would otherwise turn into a failure.
@pytest.mark.timeout(330)
def test_quick_run_writes_valid_results_for_every_scenario_and_impl(
    tmp_path: Path, server_url: str
) -> None:
    out = tmp_path / "run.json"
    proc = subprocess.run(
        [
            sys.executable, "-m", "bench", "--quick", "--ops", "60",
            "--redis-url", server_url, "--json", str(out), "--results", str(tmp_path / "r"),
            "--processes", "2",
        ],
        cwd=ROOT, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = json.loads(out.read_text())
    assert set(doc) == {
        "conditions", "results", "ratios", "ceiling", "memory", "worst_case",
        "sweep", "cluster", "processes", "near_cache",
    }  # fmt: skip
    near = doc["near_cache"]
    for run in ("cached", "hits_only", "uncached"):
        assert near["resolve_cached"][run]["ops_per_s"] > 0, run
        assert near["resolve_cached"][run]["missing"] == 0, run
    assert 0.5 < near["resolve_cached"]["cached"]["hit_ratio"] <= 1
    rev = near["revocation"]
    assert rev["changes"] > 0 and rev["p50_ms"] <= rev["p99_ms"] <= rev["max_ms"]
    assert set(doc["worst_case"]) == {"1000", "100"}
    for figures in doc["worst_case"].values():
        for op in ("list", "add_groups", "remove_groups", "delete_all", "create_at_cap"):
            assert figures[f"{op}_us"] > 0, op
        assert 0 < figures["resolve_busy"]["p50_ms"] <= figures["resolve_busy"]["p99_ms"]
    cond = doc["conditions"]
    for key in ("python", "redis_py", "hiredis", "server", "cpu_count", "loop", "concurrency"):
        assert cond[key], key
    assert "valkey_version" in cond["server"] or "redis_version" in cond["server"]
    # The server's allocator moves what freeing many small values costs: named.
    allocator = cond["server"].split("mem_allocator=")[1]
    assert allocator.startswith(("libc", "jemalloc")) and cond["server_short"].endswith(allocator)
    seen = {(r["scenario"], r["impl"]) for r in doc["results"]}
    for scenario in SCENARIOS:
        for impl in ("sessionkit", "naive"):
            assert (scenario.name, impl) in seen
        for peer in PEERS:
            assert ((scenario.name, peer) in seen) == (scenario.needs <= PEER_OPS)
    bare = [r for r in doc["sweep"] if r["impl"] == "redis-py GET"]
    assert len(bare) == 1 and bare[0]["concurrency"] == 1  # c=1's yardstick
    for r in doc["results"] + doc["sweep"]:
        assert set(r) >= RESULT_KEYS
        assert r["errors"] == 0, r
        assert r["ops_per_s"] > 0 and 0 < r["p50_ms"] <= r["p99_ms"] <= r["p999_ms"]
        assert r in bare or r["server_us_per_op"] > 0, r
    swept = {(r["scenario"], r["impl"], r["concurrency"]) for r in doc["sweep"]}
    for impl in ("sessionkit", "naive", *PEERS):
        for c in (1, 10, 50, 200):
            assert {("resolve", impl, c), ("create", impl, c)} <= swept
    for op in ("resolve", "create"):
        assert doc["cluster"][op]["ops_per_s"] > 0 and doc["cluster"][op]["errors"] == 0
        assert doc["cluster"][op]["ratio"] > 0
        assert doc["processes"][op]["ops_per_s"] > 0 and doc["processes"][op]["errors"] == 0
        assert len(doc["processes"][op]["per_process"]) == 2
        assert doc["processes"][op]["share_of_ceiling"] > 0
    vs = {(r["scenario"], r["vs"]) for r in doc["ratios"]}
    assert ("create", "naive") in vs
    assert all(("resolve", peer) in vs for peer in PEERS)
    assert ("resolve", "ceiling") in vs
    assert doc["ceiling"]["resolve_pipelined"]["ops_per_s"] > 0
    # The ceiling reads the resolve scenario's sessions (10,000 x --quick's
    # 0.02), each of them there.
    assert doc["ceiling"]["sessions"] == 200
    assert doc["ceiling"]["resolve_pipelined"]["missing"] == 0
    for op in ("resolve", "create"):  # the share measured beside the ceiling, in turns
        side = doc["ceiling"]["side_by_side"][op]
        assert side["ceiling_ops_per_s"] > 0 and side["ops_per_s"] > 0 and side["share"] > 0
    # Each hot script against its commands alone: on a fresh server that
    # holds only the sessions it reads, and on the run's own server, which
    # holds every section's keys.
    quiet, loaded = doc["ceiling"]["floor"], doc["ceiling"]["floor_loaded"]
    assert 0 < quiet["keys"] < loaded["keys"]
    for op in ("resolve", "create"):
        for floor in (quiet[op], loaded[op]):
            assert floor["script_us"] > 0 and floor["floor_us"] > 0 and floor["ratio"] > 0
    assert "(fresh server," in proc.stdout and "(the run's server," in proc.stdout
    assert doc["memory"]["sessionkit"]["bytes_per_session"] > 0
    for name in ("latest.json", "latest.md", "latest.png"):
        assert (tmp_path / "r" / name).stat().st_size > 0
    assert "web_mix" in proc.stdout


def test_unknown_scenario_is_refused() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "--scenario", "nope"],
        cwd=ROOT, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert proc.returncode == 2 and "unknown scenario" in proc.stderr


@pytest.mark.server
async def test_group_scenarios_toggle_one_group_so_sessions_keep_their_size(
    server_url: str, prefix: str
) -> None:
    import random

    from sessionkit import SessionStore

    scenario = next(s for s in SCENARIOS if s.name == "add_groups[k=10]")
    async with SessionStore.from_url(server_url) as sk:
        impl = make_impls(sk.client, prefix, ["sessionkit"], False)[0]
        state = await scenario.prepare(impl, random.Random(1), 0.001)
        rng = random.Random(2)
        changed = [await scenario.step(impl, state, rng) for _ in range(4 * len(state["users"]))]
        assert all(n == 10 for n in changed)  # every call changed every session
        for user in state["users"]:
            for session in await impl.store.list(user):
                assert session.access_groups == ["member"]  # added, then removed again


async def _command_calls(client: Any) -> dict[str, int]:
    stats = await client.info("commandstats")
    return {k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in stats.items()}


@pytest.mark.server
async def test_every_create_round_of_the_floor_starts_from_the_same_state(
    server_url: str, prefix: str
) -> None:
    """The floor measures each round of creates (the store's script's or
    its floor's) on the same server: the sessions it made and their users'
    keys are gone after it, so a later round is not measured on more."""
    from redis.asyncio import Redis

    from bench.floor import _FLOORS, _create_round
    from sessionkit import SessionStore

    async def ours(client: Redis) -> set[bytes]:
        return {k async for k in client.scan_iter(match=f"{prefix}*", count=1000)}

    async with SessionStore.from_url(server_url, prefix=prefix) as store:
        client = store.client
        assert isinstance(client, Redis)  # one server
        await store.load_scripts()
        floor_sha = await client.script_load((_FLOORS / "create.lua").read_text())
        await _create_round(client, store.settings, 50, None)  # the buckets' streams made
        held = await ours(client)
        for sha in (None, floor_sha, None):
            assert await _create_round(client, store.settings, 50, sha) > 0
            assert await ours(client) == held  # streams and their counters only
        assert await store.list("ceiling-0") == []


@pytest.mark.server
@pytest.mark.parametrize("op", ["resolve", "create"])
async def test_a_floor_script_runs_exactly_the_commands_of_its_script(
    server_url: str, prefix: str, op: str
) -> None:
    """What a hot script is measured against (`bench.floor`) is the same
    Redis commands, as many of each, on a create below the cap with its
    bucket's stream made (the common case the bench measures)."""
    from redis.asyncio import Redis

    from bench.floor import _FLOORS, _usec_per_call
    from bench.limits import _create_commands, _resolve_commands
    from sessionkit import SessionStore

    async with SessionStore.from_url(server_url, prefix=prefix) as store:
        client = store.client
        assert isinstance(client, Redis)  # one server
        await store.load_scripts()
        made = [await store.create(f"f{i}", ["member"]) for i in range(50)]
        floor_sha = await client.script_load((_FLOORS / f"{op}.lua").read_text())

        def calls() -> list[bytes]:
            if op == "resolve":
                return _resolve_commands(store.settings, [m.token or "" for m in made])
            return _create_commands(store.settings, 50)  # fresh tokens

        if op == "create":
            await _usec_per_call(client, calls(), None)  # the users' streams made
        ran = {}
        for name, sha in (("script", None), ("floor", floor_sha)):
            before = await _command_calls(client)
            await _usec_per_call(client, calls(), sha)
            after = await _command_calls(client)
            ran[name] = {
                cmd: n - before.get(cmd, 0)
                for cmd, n in after.items()
                if n != before.get(cmd, 0) and cmd not in ("info", "evalsha")
            }
        assert ran["script"] == ran["floor"]
        assert ran["script"]  # it ran commands, 50 of each at least
        assert all(n >= 50 for n in ran["script"].values())


@pytest.mark.server
async def test_the_ceiling_s_resolves_read_the_live_sessions_they_are_given(
    server_url: str, prefix: str
) -> None:
    """The resolve ceiling reads a session on every call, the sessions it is
    handed: a ceiling of reads that find nothing would flatter the server.
    Its count of empty replies is what says so, and it counts them."""
    from bench.limits import _ceilings
    from sessionkit import SessionStore

    plan = [("resolve", "pipelined", 2, 8)]
    async with SessionStore.from_url(server_url, prefix=prefix) as store:
        await store.load_scripts()
        made = [await store.create(f"c{i}", ["member"]) for i in range(40)]
        tokens = [m.token or "" for m in made]
        [live] = await _ceilings(server_url, store, tokens, 0.2, plan)
        for m in made[:10]:
            assert await store.delete(m.user_id, m.token or "")
        [gone] = await _ceilings(server_url, store, tokens, 0.2, plan)
    assert live["errors"] == 0 and live["ops_per_s"] > 0 and live["missing"] == 0
    # A quarter of the tokens are now of deleted sessions.
    assert gone["errors"] == 0 and gone["missing"] > 0


@pytest.mark.server
async def test_the_create_ceiling_sends_each_create_once(server_url: str, prefix: str) -> None:
    """A create sent again finds its token taken and takes the retry path,
    cheaper than a create: the ceiling stops when its creates run out
    rather than send them again (a resolve ceiling reads its sessions
    again, the same work)."""
    from bench.limits import _create_commands, _drive
    from sessionkit import SessionStore

    async with SessionStore.from_url(server_url, prefix=prefix) as store:
        await store.load_scripts()
        host, port = server_url.removeprefix("redis://").split("/")[0].split(":")
        commands = _create_commands(store.settings, 64)
        before = (await _command_calls(store.client)).get("evalsha", 0)
        res = await _drive(host, int(port), commands, 2.0, 2, 8, again=False)
        assert res["errors"] == 0
        after = (await _command_calls(store.client)).get("evalsha", 0)
        assert after - before == 64  # each once, in 2 s
        made = [k async for k in store.client.scan_iter(match=f"{prefix}:*:s:*", count=1000)]
        assert len(made) == 64


async def test_the_share_warms_up_then_takes_turns_with_the_ceiling(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """sessionkit's run of an operation goes once untimed, then after each
    of the rounds' ceilings; the share is the median of the rounds' own
    ratios, not a ratio of medians. (The ceiling's process stands in
    here: what is checked is the order and the arithmetic.)"""
    from bench import limits

    log: list[str] = []
    ceilings = iter([100.0, 200.0, 400.0, 100.0, 100.0, 100.0])
    mine = iter([90.0, 100.0, 60.0, 50.0, 60.0, 70.0])

    async def ceiling(*args: Any) -> list[dict[str, Any]]:
        log.append(f"ceiling {args[-1][0][0]}")
        return [{"ops_per_s": next(ceilings)}]

    async def ours(op: str) -> float:
        timed = bool(log) and log[-1] == f"ceiling {op}"
        log.append(op)
        return next(mine) if timed else 1.0

    monkeypatch.setattr(limits, "_ceilings", ceiling)
    out = await limits.measure_share("redis://unused", cast(Any, None), [], 0.1, ours, rounds=3)
    for op in ("resolve", "create"):
        i = log.index(op)
        assert log[i : i + 7] == [op, *[f"ceiling {op}", op] * 3]
    # Resolve's ratios 0.9, 0.5, 0.15: their median 0.5, where the medians'
    # ratio would be 90 / 200.
    assert out["resolve"] == {"ceiling_ops_per_s": 200.0, "ops_per_s": 90.0, "share": 0.5}
    assert out["create"]["share"] == 0.6
    assert out["rounds"] == 3


async def test_interleaved_runs_take_turns_in_rotating_order_and_sum_them() -> None:
    """Each implementation runs in `slices` turns, their order rotating, so
    that all of them see the same moments; each result sums its turns."""
    log: list[str] = []
    turns: list[tuple[str, random.Random]] = []  # each turn's worker has an rng of its own

    async def step(impl: Impl, state: Any, rng: random.Random) -> None:
        log.append(impl.name)
        if not any(r is rng for _, r in turns):
            turns.append((impl.name, rng))
        await asyncio.sleep(0.002)

    scenario = Scenario("probe", frozenset(), _no_prepare, step)
    a, b = (Impl(name, None, frozenset(), None) for name in ("a", "b"))
    results = await run_interleaved(
        scenario, [(a, None), (b, None)], concurrency=1, duration=0.3, slices=3
    )
    # Turns a, b | b, a | a, b, whatever a loaded machine lets each do.
    assert [name for name, _ in turns] == ["a", "b", "b", "a", "a", "b"]
    assert [name for name, _ in itertools.groupby(log)] == ["a", "b", "a", "b"]
    assert [r.impl for r in results] == ["a", "b"]
    assert [r.ops for r in results] == [log.count("a"), log.count("b")]
    # Three turns of 0.1 s each, however late the last call of one ends.
    assert all(0.29 < r.seconds < 3.0 for r in results)


async def _no_prepare(impl: Impl, rng: random.Random, scale: float) -> None:
    return None


@pytest.mark.server
async def test_the_sweep_runs_one_call_at_a_time_for_longer(
    server_url: str, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """c = 1, whose ratios are the sweep's closest, runs
    `ONE_AT_A_TIME_LONGER` times as long as the other levels."""
    from bench import sections
    from bench.impls import make_impls
    from sessionkit import SessionStore

    asked: dict[tuple[str, int], tuple[float, int]] = {}

    async def recorded(scenario: Scenario, entries: Any, **kw: Any) -> Any:
        asked[(scenario.name, kw["concurrency"])] = (kw["duration"], kw["slices"])
        return await run_interleaved(scenario, entries, **kw)

    monkeypatch.setattr(sections, "run_interleaved", recorded)
    assert sections.ONE_AT_A_TIME_LONGER == 3
    async with SessionStore.from_url(server_url) as store:
        impls = make_impls(store.client, prefix, ["sessionkit"], False, events=False)
        swept = await sections.sweep(impls, duration=0.2, scale=0.01, levels=(1, 10))
    # What each level is asked for (the wall time of a level on a loaded
    # host can run well past it, so that is only bounded below).
    for op in ("resolve", "create"):
        (one, one_turns), (ten, ten_turns) = asked[(op, 1)], asked[(op, 10)]
        assert one == pytest.approx(0.6) and one_turns == 6  # three times 0.2 s, in 0.1 s turns
        assert ten == pytest.approx(0.2) and ten_turns == 2
    seconds = {(r["scenario"], r["impl"], r["concurrency"]): r["seconds"] for r in swept}
    for op in ("resolve", "create"):
        assert seconds[(op, "sessionkit", 1)] >= 0.59
        assert seconds[(op, "sessionkit", 10)] > 0.19
    assert seconds[("resolve", "redis-py GET", 1)] >= 0.59  # its yardstick alike
