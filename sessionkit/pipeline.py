"""Automatic pipelining: concurrent script calls share one write.

Calls made by many tasks in the same event-loop tick are packed into one
buffer, written on one pooled connection, and their replies read in order,
as valkey-glide and ioredis do. Each operation is still exactly one EVALSHA;
it just no longer pays a full round trip and a socket write of its own, which
is where a single asyncio process spends most of its time.
"""

from __future__ import annotations

import asyncio
import math
from typing import Any, Final, TypeGuard

import redis.asyncio as aioredis
from redis.exceptions import NoScriptError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from sessionkit.scripts import Script

#: Most commands written in one batch.
MAX_BATCH: Final = 512


def pack_evalsha(script: Script, keys: tuple[str, ...], args: tuple[Any, ...]) -> bytes:
    """One EVALSHA in RESP (the hot path of every pipelined call)."""
    numkeys = b"%d" % len(keys)
    parts = [
        b"*%d\r\n" % (3 + len(keys) + len(args)),
        script.resp_head,
        b"$%d\r\n%s\r\n" % (len(numkeys), numkeys),
    ]
    append = parts.append
    for value in (*keys, *args):
        kind = type(value)
        if kind is str:
            b = value.encode()
        elif kind is bytes:
            b = value
        elif kind is int:
            b = b"%d" % value
        else:
            raise TypeError(f"cannot send {kind.__name__} to the server")
        append(b"$%d\r\n" % len(b))
        append(b)
        append(b"\r\n")
    return b"".join(parts)


_Call = tuple[Script, tuple[str, ...], tuple[Any, ...], "asyncio.Future[Any]"]


class Pipeliner:
    """Coalesces concurrent EVALSHA calls on a `redis.asyncio.Redis` client."""

    def __init__(self, client: aioredis.Redis) -> None:
        self.client = client
        self._pending: list[_Call] = []
        self._scheduled = False
        self._tasks: set[asyncio.Task[None]] = set()

    @staticmethod
    def supports(client: object) -> TypeGuard[aioredis.Redis]:
        """Whether `client` is a plain redis-py asyncio client over redis-py
        connections (not a cluster, not an in-process fake)."""
        if type(client) is not aioredis.Redis:
            return False
        cls = client.connection_pool.connection_class
        return cls.__module__.startswith("redis.")

    async def call(self, script: Script, keys: tuple[str, ...], args: tuple[Any, ...]) -> Any:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Any] = loop.create_future()
        self._pending.append((script, keys, args, fut))
        if not self._scheduled:
            self._scheduled = True
            loop.call_soon(self._flush)
        return await fut

    def _flush(self) -> None:
        self._scheduled = False
        pending, self._pending = self._pending, []
        for start in range(0, len(pending), MAX_BATCH):
            task = asyncio.ensure_future(self._send(pending[start : start + MAX_BATCH]))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _send(self, batch: list[_Call]) -> None:
        try:
            payload = b"".join(pack_evalsha(s, k, a) for s, k, a, _ in batch)
        except TypeError as exc:  # a programming error: fail the whole batch loudly
            for *_, fut in batch:
                if not fut.done():
                    fut.set_exception(exc)
            return
        pool: Any = self.client.connection_pool
        retry: list[_Call] = []
        read = 0
        conn: Any = None
        try:
            conn = await pool.get_connection()
            await conn.send_packed_command(payload, check_health=False)
            # One timer for the batch, pushed back after every reply: each
            # reply gets socket_timeout, however long the batch.
            loop = asyncio.get_running_loop()
            limit = conn.socket_timeout
            async with asyncio.timeout(None) as deadline:
                pushed = -math.inf
                for call in batch:
                    # Push the deadline back only now and then: rescheduling
                    # a timer per reply would cost more than the reply.
                    if limit is not None and loop.time() - pushed > limit / 8:
                        pushed = loop.time()
                        deadline.reschedule(pushed + limit)
                    fut = call[3]
                    try:
                        reply = await conn.read_response(timeout=math.inf)
                    except NoScriptError:
                        read += 1
                        retry.append(call)
                        continue
                    except ResponseError as exc:
                        read += 1
                        if not fut.done():
                            fut.set_exception(exc)
                        continue
                    read += 1
                    if not fut.done():
                        fut.set_result(reply)
        except BaseException as exc:
            if conn is not None and read < len(batch):
                await conn.disconnect()  # replies left unread: the stream is out of step
            for *_, fut in batch[read:]:
                if not fut.done():
                    fut.set_exception(_as_connection_error(exc))
            if not isinstance(exc, Exception):
                raise
        finally:
            if conn is not None:
                await pool.release(conn)
        for script, keys, args, fut in retry:  # the server lost its scripts: EVAL loads them
            try:
                result = await script(self.client, keys, args)
            except Exception as exc:
                if not fut.done():
                    fut.set_exception(exc)
            else:
                if not fut.done():
                    fut.set_result(result)


def _as_connection_error(exc: BaseException) -> BaseException:
    """A batch deadline is a server that did not answer in time."""
    if isinstance(exc, TimeoutError):
        err = RedisTimeoutError("timed out reading replies from the server")
        err.__cause__ = exc
        return err
    return exc
