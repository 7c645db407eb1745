"""The near cache's line to the server: Redis tells us when a key changes.

One connection per primary turns on ``CLIENT TRACKING ... BCAST PREFIX
<prefix>:`` redirected to itself and subscribes to
``__redis__:invalidate``. In broadcast mode the server remembers nothing per
key: every write under the prefix (by any client, from inside a script too,
and a key's expiry) is announced, one message per command or script, whatever
this process has read. The default mode was measured and not taken: it makes
the server remember, per key, each connection that read it, and would need
tracking on every pooled connection of the store.

The cache may be trusted only while every one of these connections is up:
`on_state(False)` is called before anything else when one breaks (and the
cache empties itself), `on_state(True)` only once all are subscribed again.
A connection that stops answering its PINGs counts as broken.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any, Final

from sessionkit import _redispy
from sessionkit._transport import Transport

log = logging.getLogger("sessionkit.nearcache")

CHANNEL: Final = b"__redis__:invalidate"
#: How these connections show in CLIENT LIST.
CLIENT_NAME: Final = "sessionkit-near-cache"
#: A PING goes out on a tracking connection idle this long...
PING_EVERY: Final = 1.0
#: ...and a connection silent for this long is dead.
SILENT_LIMIT: Final = 3.0
#: Pauses between reconnection attempts, growing to the last.
PAUSES: Final = (0.05, 0.1, 0.2, 0.5, 1.0)


class Tracking:
    """Keeps one tracking connection per primary of a store's server."""

    def __init__(
        self,
        transport: Transport,
        prefix: str,
        on_keys: Callable[[list[bytes] | None], None],
        on_state: Callable[[bool], None],
    ) -> None:
        self.transport = transport
        self.prefix = prefix + ":"
        self.on_keys = on_keys
        self.on_state = on_state
        self._task: asyncio.Task[None] | None = None
        self._resync = asyncio.Event()
        self._closed = False

    def start(self) -> None:
        """Start keeping the connections (in the running loop), if not yet."""
        if self._task is None and not self._closed:
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name="sessionkit-near-cache"
            )

    def resync(self) -> None:
        """The cluster's topology changed: connect to its primaries anew."""
        self._resync.set()

    async def aclose(self) -> None:
        self._closed = True
        if self._task is not None:
            await _stop([self._task])
            self._task = None

    async def _run(self) -> None:
        failures = 0
        while True:
            conns: list[Any] = []
            try:
                self._resync.clear()
                for conn in await self._connections():
                    conns.append(conn)
                    await self._subscribe(conn)
                self.on_state(True)
                failures = 0
                await self._listen(conns)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a broken or refused connection: try again
                log.debug("near cache: invalidation channel down (%s)", type(exc).__name__)
            finally:
                self.on_state(False)
                for conn in conns:
                    with contextlib.suppress(Exception):
                        await conn.disconnect()
            if self.transport.cluster and not self._resync.is_set():
                await self.transport.reload()
            await asyncio.sleep(PAUSES[min(failures, len(PAUSES) - 1)])
            failures += 1

    async def _connections(self) -> list[Any]:
        """A new connection to each primary, with the client's settings."""
        if not self.transport.cluster:
            return [_redispy.dedicated_connection(self.transport.client.connection_pool)]
        await self.transport.ready()
        return [_redispy.dedicated_connection(n) for n in self.transport.client.get_primaries()]

    async def _subscribe(self, conn: Any) -> None:
        await conn.connect()
        await conn.send_command("CLIENT", "SETNAME", CLIENT_NAME)
        await conn.read_response()
        await conn.send_command("CLIENT", "ID")
        client_id = await conn.read_response()
        await conn.send_command(
            "CLIENT", "TRACKING", "ON", "REDIRECT", client_id, "BCAST", "PREFIX", self.prefix
        )
        await conn.read_response()
        await conn.send_command("SUBSCRIBE", CHANNEL)
        await conn.read_response(push_request=True)

    async def _listen(self, conns: list[Any]) -> None:
        """Until a connection breaks, or the topology changes."""
        readers = [asyncio.create_task(self._read_one(c, self.on_keys)) for c in conns]
        resync = asyncio.create_task(self._resync.wait())
        try:
            done, _ = await asyncio.wait([*readers, resync], return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                if task is not resync:
                    task.result()  # its error ends the listening
        finally:
            await _stop([*readers, resync])

    @staticmethod
    async def _read_one(conn: Any, on_keys: Callable[[list[bytes] | None], None]) -> None:
        """Hand each announcement to `on_keys`; PING when idle; a connection
        silent for `SILENT_LIMIT` is dead."""
        loop = asyncio.get_running_loop()
        heard = loop.time()
        while True:
            # With a timeout of its own, redis-py returns None when nothing came.
            message = await conn.read_response(timeout=PING_EVERY, push_request=True)
            if message is None:
                if loop.time() - heard > SILENT_LIMIT:
                    raise ConnectionError("the invalidation channel went silent")
                await conn.send_command("PING")
                continue
            heard = loop.time()
            if (
                isinstance(message, list)
                and len(message) == 3
                and message[0] == b"message"
                and message[1] == CHANNEL
            ):
                on_keys(message[2])


async def _stop(tasks: list[asyncio.Task[Any]]) -> None:
    """Cancel `tasks` and wait until they end. Cancelled again while they
    run on: redis-py's read with a timeout can take a cancellation that lands
    with its timeout for the timeout (and return None as for silence). A
    cancellation of the caller is held back until they are all done."""
    cancelled = False
    while pending := [t for t in tasks if not t.done()]:
        for task in pending:
            task.cancel()
        try:
            await asyncio.wait(pending, timeout=0.05)
        except asyncio.CancelledError:
            cancelled = True
    for task in tasks:
        if not task.cancelled():
            with contextlib.suppress(BaseException):
                task.exception()  # retrieved: no "never retrieved" warning
    if cancelled:
        raise asyncio.CancelledError
