"""The operator CLI against the real server and the real cluster: every
command, JSON and tables, bad arguments and a server that cannot be reached."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest

from sessionkit import SessionStore
from sessionkit.server import free_port
from tests.conftest import stream_of

REAL = [
    pytest.param("server", marks=pytest.mark.server),
    pytest.param("cluster", marks=pytest.mark.cluster),
]


@pytest.fixture(params=REAL)
async def target(request: pytest.FixtureRequest, prefix: str) -> AsyncIterator[str]:
    """The URL of a real server or cluster."""
    yield request.getfixturevalue("server_url" if request.param == "server" else "cluster_url")


@pytest.fixture
async def store(target: str, prefix: str) -> AsyncIterator[SessionStore]:
    async with SessionStore.from_url(target, prefix=prefix) as s:
        yield s


def cli(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sessionkit.cli", "--redis-url", url, *args],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


async def test_sessions_list_and_revoke(store: SessionStore, target: str, prefix: str) -> None:
    a = await store.create("ops-user", ["g"], user_agent="curl/8.5")
    b = await store.create("ops-user")
    c = await store.create("ops-user")
    p = ("--prefix", prefix)
    out = cli(target, *p, "--json", "sessions", "list", "ops-user")
    assert out.returncode == 0, out.stderr
    rows = json.loads(out.stdout)
    assert [r["id"] for r in rows] == [a.id, b.id, c.id] and rows[0]["groups"] == "g"
    table = cli(target, *p, "sessions", "list", "ops-user").stdout
    assert table.splitlines()[0].split()[:2] == ["id", "created"] and a.id in table
    out = cli(target, *p, "--json", "sessions", "revoke", "ops-user", "--id", b.id)
    assert json.loads(out.stdout) == {"revoked": 1}
    out = cli(target, *p, "sessions", "revoke", "ops-user", "--all-except", a.id)
    assert out.stdout.strip() == "revoked 1 session(s) of ops-user"
    assert [s.id for s in await store.list("ops-user")] == [a.id]
    out = cli(target, *p, "--json", "sessions", "revoke", "ops-user", "--all")
    assert json.loads(out.stdout) == {"revoked": 1} and await store.list("ops-user") == []


async def test_groups_and_stats(store: SessionStore, target: str, prefix: str) -> None:
    for u in ("u1", "u1", "u2"):
        await store.create(u)
    p = ("--prefix", prefix)
    out = cli(target, *p, "--json", "groups", "add", "u1", "admin", "beta")
    assert json.loads(out.stdout) == {"changed": 2}
    assert {tuple(s.access_groups) for s in await store.list("u1")} == {("admin", "beta")}
    out = cli(target, *p, "groups", "remove", "u1", "beta")
    assert out.stdout.strip() == "changed 2 session(s) of u1"
    stats = json.loads(cli(target, *p, "--json", "stats").stdout)
    assert stats["sessions"] == 3 and stats["users"] == 2 and stats["used_memory_bytes"] > 0
    assert stats["events"] == 3 + 1 + 1  # three created, groups added, groups removed
    assert stats["event_streams"] == 2  # u1's bucket and u2's
    assert "3 sessions, 2 users" in cli(target, *p, "stats").stdout


@pytest.mark.server
def test_bad_arguments_and_bad_input_have_clear_exit_codes(server_url: str) -> None:
    missing = cli(server_url, "sessions", "revoke", "someone")
    assert missing.returncode == 2 and "one of the arguments" in missing.stderr
    assert cli(server_url, "nonsense").returncode == 2
    empty = cli(server_url, "sessions", "list", "")
    assert empty.returncode == 3 and "user_id must not be empty" in empty.stderr
    bad_url = cli("http://nowhere", "stats")
    assert bad_url.returncode == 3 and "scheme" in bad_url.stderr


@pytest.mark.server
def test_a_dead_server_is_reported_plainly() -> None:
    url = f"redis://127.0.0.1:{free_port()}"
    out = cli(url, "sessions", "list", "someone")
    assert out.returncode == 4
    assert out.stderr.startswith(f"sessionkit: error: cannot reach {url}")
    assert "Traceback" not in out.stderr


@pytest.mark.server
def test_a_password_in_the_url_is_never_printed() -> None:
    port = free_port()
    out = cli(f"redis://admin:hunter2@127.0.0.1:{port}", "sessions", "list", "someone")
    assert out.returncode == 4 and "hunter2" not in out.stderr + out.stdout
    assert f"cannot reach redis://admin:***@127.0.0.1:{port}" in out.stderr


async def test_global_options_may_follow_the_subcommand(
    store: SessionStore, target: str, prefix: str
) -> None:
    s = await store.create("late")
    out = cli(target, "sessions", "list", "late", "--prefix", prefix, "--json")
    assert out.returncode == 0, out.stderr
    assert [r["id"] for r in json.loads(out.stdout)] == [s.id]


async def test_control_characters_reach_the_terminal_escaped(
    store: SessionStore, target: str, prefix: str
) -> None:
    await store.create("esc", ["\x1b[2J\x1b[31mred", "c1\x9bx"])
    out = cli(target, "--prefix", prefix, "sessions", "list", "esc")
    assert out.returncode == 0, out.stderr
    assert "\x1b" not in out.stdout and "\x9b" not in out.stdout
    assert "\\x1b[2J\\x1b[31mred" in out.stdout and "c1\\x9bx" in out.stdout


async def test_a_prefix_is_matched_literally_not_as_a_pattern(
    store: SessionStore, target: str, prefix: str
) -> None:
    await store.create("someone")  # under `prefix`
    pattern_like = prefix[:-1] + "?"  # as a SCAN pattern it would match `prefix`
    stats = json.loads(cli(target, "--prefix", pattern_like, "--json", "stats").stdout)
    assert stats["sessions"] == 0


@pytest.mark.server
def test_server_command_prints_its_url_and_serves() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "sessionkit.cli", "server"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=os.environ.copy(),
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().strip()
        assert url.startswith("redis://127.0.0.1:")
        assert cli(url, "--json", "stats").returncode == 0
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(10)
        for stream in (proc.stdout, proc.stderr):
            if stream:
                stream.close()
    assert proc.returncode == 0


def event_lines(out: subprocess.CompletedProcess[str]) -> list[dict[str, object]]:
    assert out.returncode == 0, out.stderr
    return [json.loads(line) for line in out.stdout.splitlines()]


async def test_events_tail_prints_what_happened_since(
    store: SessionStore, target: str, prefix: str
) -> None:
    since = (datetime.now(UTC) - timedelta(seconds=2)).isoformat()
    s = await store.create("tailed", ["g"])
    await store.add_groups("tailed", "h")
    await store.delete_all("tailed")
    p = ("--prefix", prefix)
    out = cli(target, *p, "--json", "events", "tail", "--since", since, "--count", "3")
    events = event_lines(out)
    assert [(e["type"], e["user_id"], e["session_ids"]) for e in events] == [
        ("created", "tailed", [s.id]),
        ("groups_added", "tailed", [s.id]),
        ("all_deleted", "tailed", [s.id]),
    ]
    assert events[0]["groups"] == ["g"] and s.token and s.token not in out.stdout
    text = cli(target, *p, "events", "tail", "--since", since, "--count", "1").stdout
    assert text.split()[1:4] == ["created", '"tailed"', f"sessions={s.id}"]
    assert 'groups=["g"]' in text


async def test_events_tail_as_a_group_consumer_resumes_where_it_stopped(
    store: SessionStore, target: str, prefix: str
) -> None:
    p = ("--prefix", prefix, "--json")
    args = [sys.executable, "-m", "sessionkit.cli", "--redis-url", target, *p]
    proc = await asyncio.create_subprocess_exec(
        *args, "events", "tail", "--group", "ops", "--count", "2",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        # The consumer makes its group on every stream when it starts.
        stream = stream_of(prefix, "grouped")
        deadline = time.monotonic() + 30
        while not await _has_group(store, stream, "ops"):
            assert time.monotonic() < deadline and proc.returncode is None
            await asyncio.sleep(0.1)
        first = await store.create("grouped")
        await store.add_groups("grouped", "x")
        stdout, stderr = await asyncio.wait_for(proc.communicate(), 60)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.communicate()
    assert proc.returncode == 0, stderr
    assert [json.loads(line)["type"] for line in stdout.decode().splitlines()] == [
        "created",
        "groups_added",
    ]
    later = await store.create("grouped")  # while no consumer runs
    out = cli(target, *p, "events", "tail", "--group", "ops", "--count", "1")
    assert [(e["type"], e["session_ids"]) for e in event_lines(out)] == [("created", [later.id])]
    assert first.id != later.id
    status = cli(target, *p, "events", "status", "--group", "ops")
    assert json.loads(status.stdout) == {
        "group": "ops",
        "pending": 0,
        "undelivered": 0,
        "lost": 0,
        "lost_streams": [],
    }
    text = cli(target, "--prefix", prefix, "events", "status", "--group", "ops").stdout
    assert text.strip() == "group ops: 0 pending, 0 undelivered"


async def _has_group(store: SessionStore, stream: str, group: str) -> bool:
    try:
        groups = await store.client.xinfo_groups(stream)
    except Exception:
        return False
    return any(g["name"] in (group, group.encode()) for g in groups)


@pytest.mark.server
def test_events_tail_bad_arguments_and_a_dead_server(server_url: str) -> None:
    for bad in (
        ["--count", "0"],
        ["--since", "yesterday"],
        ["--since", "2026-01-01T00:00:00", "--group", "g"],
    ):
        out = cli(server_url, "events", "tail", *bad)
        assert out.returncode == 2 and "Traceback" not in out.stderr, bad
    url = f"redis://127.0.0.1:{free_port()}"
    out = cli(url, "events", "tail", "--count", "1")
    assert out.returncode == 4 and out.stderr.startswith(f"sessionkit: error: cannot reach {url}")


@pytest.mark.server
def test_events_tail_stops_on_sigterm(server_url: str) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "sessionkit.cli", "--redis-url", server_url, "events", "tail"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    time.sleep(1.5)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=10)
    assert proc.returncode == 130 and "Traceback" not in stderr
