"""The operator CLI against the real server: every command, JSON and tables,
bad arguments and a server that cannot be reached."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest

from sessionkit import SessionStore
from sessionkit.server import free_port
from tests.real_server import real_server_backend  # noqa: F401 (the fixture)

pytestmark = pytest.mark.server


def cli(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sessionkit.cli", "--redis-url", url, *args],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


async def test_sessions_list_and_revoke(store: SessionStore, server_url: str, prefix: str) -> None:
    a = await store.create("ops-user", ["g"], user_agent="curl/8.5")
    b = await store.create("ops-user")
    c = await store.create("ops-user")
    p = ("--prefix", prefix)
    out = cli(server_url, *p, "--json", "sessions", "list", "ops-user")
    assert out.returncode == 0, out.stderr
    rows = json.loads(out.stdout)
    assert [r["id"] for r in rows] == [a.id, b.id, c.id] and rows[0]["groups"] == "g"
    table = cli(server_url, *p, "sessions", "list", "ops-user").stdout
    assert table.splitlines()[0].split()[:2] == ["id", "created"] and a.id in table
    out = cli(server_url, *p, "--json", "sessions", "revoke", "ops-user", "--id", b.id)
    assert json.loads(out.stdout) == {"revoked": 1}
    out = cli(server_url, *p, "sessions", "revoke", "ops-user", "--all-except", a.id)
    assert out.stdout.strip() == "revoked 1 session(s) of ops-user"
    assert [s.id for s in await store.list("ops-user")] == [a.id]
    out = cli(server_url, *p, "--json", "sessions", "revoke", "ops-user", "--all")
    assert json.loads(out.stdout) == {"revoked": 1} and await store.list("ops-user") == []


async def test_groups_and_stats(store: SessionStore, server_url: str, prefix: str) -> None:
    for u in ("u1", "u1", "u2"):
        await store.create(u)
    p = ("--prefix", prefix)
    out = cli(server_url, *p, "--json", "groups", "add", "u1", "admin", "beta")
    assert json.loads(out.stdout) == {"changed": 2}
    assert {tuple(s.access_groups) for s in await store.list("u1")} == {("admin", "beta")}
    out = cli(server_url, *p, "groups", "remove", "u1", "beta")
    assert out.stdout.strip() == "changed 2 session(s) of u1"
    stats = json.loads(cli(server_url, *p, "--json", "stats").stdout)
    assert stats["sessions"] == 3 and stats["users"] == 2 and stats["used_memory_bytes"] > 0
    assert "3 sessions, 2 users" in cli(server_url, *p, "stats").stdout


def test_bad_arguments_and_bad_input_have_clear_exit_codes(server_url: str) -> None:
    missing = cli(server_url, "sessions", "revoke", "someone")
    assert missing.returncode == 2 and "one of the arguments" in missing.stderr
    assert cli(server_url, "nonsense").returncode == 2
    empty = cli(server_url, "sessions", "list", "")
    assert empty.returncode == 3 and "user_id must not be empty" in empty.stderr
    bad_url = cli("http://nowhere", "stats")
    assert bad_url.returncode == 3 and "scheme" in bad_url.stderr


def test_a_dead_server_is_reported_plainly() -> None:
    url = f"redis://127.0.0.1:{free_port()}"
    out = cli(url, "sessions", "list", "someone")
    assert out.returncode == 4
    assert out.stderr.startswith(f"sessionkit: error: cannot reach {url}")
    assert "Traceback" not in out.stderr


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
