"""Commands in RESP, the bytes a call puts on the wire.

Packing is on every call's path, so it is done in C (hiredis's packer,
which is what redis-py itself uses when hiredis is installed) and, for the
hot scripts, only for the arguments that change from call to call: a
`Template` packs a script's fixed arguments (a store's settings) once.
Everything here gives byte for byte what redis-py would send; a bool or
None is refused, as redis-py refuses it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final, cast

import hiredis

#: hiredis's RESP packer, in C (its stub types the argument as a 1-tuple).
_pack_command: Final = cast("Callable[[tuple[Any, ...]], bytes]", hiredis.pack_command)

Part = str | bytes | int


def pack(*parts: Part) -> bytes:
    """One command (str, bytes or int arguments)."""
    return _pack_command(parts)


def pack_script(sha: str, keys: tuple[str, ...], args: tuple[Any, ...]) -> bytes:
    """EVALSHA of the script whose SHA1 is `sha`."""
    return _pack_command(("EVALSHA", sha, len(keys), *keys, *args))


def unpack(payload: bytes) -> list[bytes]:
    """The parts of one packed command, `pack` undone (for clients without
    a raw write, which take a command as its parts)."""
    parts: list[bytes] = []
    count_end = payload.index(b"\r\n")
    pos = count_end + 2
    for _ in range(int(payload[1:count_end])):
        size_end = payload.index(b"\r\n", pos)
        size = int(payload[pos + 1 : size_end])
        start = size_end + 2
        parts.append(payload[start : start + size])
        pos = start + size + 2
    return parts


def _array_header(n: int) -> bytes:
    return b"*%d\r\n" % n


def as_eval(payload: bytes, sha: str, source: str) -> bytes:
    """The EVAL of `source` that does what `payload`, an EVALSHA of it,
    does (for a server that lost the script): the same keys and arguments,
    only the first two parts differ."""
    count_end = payload.index(b"\r\n") + 2
    evalsha = pack("EVALSHA", sha)[len(_array_header(2)) :]
    if payload[count_end : count_end + len(evalsha)] != evalsha:
        raise ValueError("not an EVALSHA of this script")
    head = pack("EVAL", source)[len(_array_header(2)) :]
    return payload[:count_end] + head + payload[count_end + len(evalsha) :]


class Template:
    """EVALSHA of one script whose last arguments are fixed: those, the
    command's name, the SHA1 and the key count are packed once, and a call
    packs only its own keys and leading arguments. The dearest step of a
    call's packing was the parts that never change."""

    __slots__ = ("_head", "_strip", "_tail", "_variable", "fixed")

    def __init__(self, sha: str, keys: int, variable: int, fixed: tuple[Part, ...]) -> None:
        """`variable`: how many parts a call gives (its `keys` keys, then
        its leading arguments); `fixed`: the arguments after them."""
        if not 1 <= keys <= variable:
            raise ValueError("a template's call gives its keys, at least one")
        self.fixed = fixed
        self._variable = variable
        self._head = (
            _array_header(3 + variable + len(fixed))
            + pack("EVALSHA", sha, keys)[len(_array_header(3)) :]
        )
        self._strip = len(_array_header(variable))
        self._tail = pack(*fixed)[len(_array_header(len(fixed))) :] if fixed else b""

    def pack(self, *parts: Part) -> bytes:
        """The call with these keys and leading arguments."""
        if len(parts) != self._variable:
            raise TypeError(f"this call takes {self._variable} parts, got {len(parts)}")
        return self._head + _pack_command(parts)[self._strip :] + self._tail
