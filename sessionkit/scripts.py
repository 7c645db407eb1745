"""The Lua scripts, loaded from the ``lua/`` package folder.

Each script is ``_lib.lua`` followed by its own file: one static source per
operation, so user data travels only in KEYS and ARGV. Scripts run by
EVALSHA; a server that does not know the script (``NOSCRIPT`` after a restart,
a failover or ``SCRIPT FLUSH``) gets it by EVAL, which also caches it there.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from importlib import resources
from typing import Any, Final

from redis.exceptions import NoScriptError


@dataclass(frozen=True, slots=True)
class Script:
    name: str
    source: str
    sha: str
    #: ``EVALSHA <sha>`` as RESP bulk strings, for packing calls by hand.
    resp_head: bytes

    async def __call__(self, client: Any, keys: tuple[str, ...], args: tuple[Any, ...]) -> Any:
        """Run the script on `client` (one round trip once the server has it)."""
        try:
            return await client.evalsha(self.sha, len(keys), *keys, *args)
        except NoScriptError:
            return await client.eval(self.source, len(keys), *keys, *args)


def _load(name: str, *, lib: bool = True) -> Script:
    folder = resources.files("sessionkit") / "lua"
    source = (folder / f"{name}.lua").read_text("utf-8")
    if lib:
        source = (folder / "_lib.lua").read_text("utf-8") + "\n" + source
    sha = hashlib.sha1(source.encode("utf-8")).hexdigest()
    return Script(name, source, sha, b"$7\r\nEVALSHA\r\n$40\r\n%s\r\n" % sha.encode())


class Scripts:
    """The typed table of every script sessionkit runs."""

    create: Final = _load("create")
    get: Final = _load("get")
    list: Final = _load("list")
    delete: Final = _load("delete")
    delete_all: Final = _load("delete_all")
    groups: Final = _load("groups")
    #: The event consumer's per-node read on a cluster; it starts with a
    #: ``#!lua`` flags line, so it goes without the helpers.
    read_events: Final = _load("read_events", lib=False)

    @classmethod
    def all(cls) -> tuple[Script, ...]:
        return (cls.create, cls.get, cls.list, cls.delete, cls.delete_all, cls.groups)
