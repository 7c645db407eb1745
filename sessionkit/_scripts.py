"""The Lua scripts, loaded from the ``lua/`` package folder.

Each script is what it uses of ``_lib.lua`` followed by its own file: one static source per
operation, so user data travels only in KEYS and ARGV. Scripts run by
EVALSHA; a server that does not know the script (``NOSCRIPT`` after a restart,
a failover or ``SCRIPT FLUSH``) gets it by EVAL, which also caches it there.
"""

from __future__ import annotations

import functools
import hashlib
import re
from dataclasses import dataclass
from importlib import resources
from typing import Any, Final

import msgspec

from sessionkit import _keys as keys
from sessionkit._model import encode_groups
from sessionkit._resp import Template, pack_script
from sessionkit.defaults import BUCKETS, MAX_GROUPS_PER_SESSION


@dataclass(frozen=True, slots=True)
class Script:
    name: str
    source: str
    sha: str


_DEFINITION = re.compile(r"^local (?:function )?([\w, ]+?)(?:\(| =|$)", re.M)
_WORD = re.compile(r"[A-Za-z_]\w*")
_COMMENT = re.compile(r"--.*")


@dataclass(frozen=True, slots=True)
class _Definition:
    """One top-level definition of ``_lib.lua``: the names it defines, its
    text (with the comment lines right above it), and whether it is a
    function (each one defined costs every call of a script a closure)."""

    names: frozenset[str]
    text: str
    function: bool


def _used(lib: str, body: str) -> tuple[str, list[_Definition]]:
    """The text of `lib` before its first definition, and the definitions
    of `lib` that `body` uses, directly or through each other, in their
    order. A definition starts at a top-level ``local`` line (with the
    comment lines just before it) and runs to the next one."""
    found: list[tuple[int, re.Match[str]]] = []
    for m in _DEFINITION.finditer(lib):
        start = m.start()
        while True:  # take in the comment lines right above
            above = lib.rfind("\n", 0, start - 1) + 1
            if start == 0 or not lib.startswith("--", above):
                break
            start = above
        found.append((start, m))
    blocks: list[_Definition] = []
    for i, (start, m) in enumerate(found):
        end = found[i + 1][0] if i + 1 < len(found) else len(lib)
        names = frozenset(n.strip() for n in m.group(1).split(","))
        blocks.append(_Definition(names, lib[start:end], m.group(0).startswith("local function")))
    wanted = _words(body)
    keep = [False] * len(blocks)
    changed = True
    while changed:  # the uses of what is kept, until nothing new
        changed = False
        for i in reversed(range(len(blocks))):
            if not keep[i] and blocks[i].names & wanted:
                keep[i] = changed = True
                wanted |= _words(blocks[i].text)
    head = lib[: found[0][0]] if found else lib
    return head, [b for b, k in zip(blocks, keep, strict=True) if k]


def _words(lua: str) -> set[str]:
    return set(_WORD.findall(_COMMENT.sub("", lua)))


def _one_line(lua: str) -> str:
    """Lua code on one line, comments dropped (``_lib.lua`` has no ``--`` in
    a string and no long string)."""
    lines = (_COMMENT.sub("", line).strip() for line in lua.splitlines())
    return " ".join(line for line in lines if line)


#: The name a script calls to get its helper functions made on demand, and
#: what it hands them: the time it read (as ``clock()`` of ``_lib.lua`` keeps it).
LAZY: Final = "helpers"
LAZY_ARGS: Final = ("clock_ms", "clock_us16")


def assemble(lib: str, body: str) -> str:
    """A script's source: the definitions of `lib` it uses, on one line,
    then its own file starting on that same line, so that the server's
    error messages name the lines of the script's own file.

    A script that calls ``helpers(ms, us16)`` (its clock) gets its helper
    functions made only when it does, as a table (``local h = helpers(now,
    created); h.emit(...)``): the hot path of a create calls none, and
    defining them all cost each call a tenth of the server's work.
    Constants stay plain locals, and ``helpers`` defines its own copies of
    them: a function that uses none of the script's locals is made without
    capturing each one (on a create that was a tenth of its server time
    when creates come one at a time, and a fifth of what its Lua allocates)."""
    head, used = _used(lib, body)
    if LAZY not in _words(body):
        return _one_line(head + "".join(d.text for d in used)) + " " + body
    functions = [d for d in used if d.function]
    constants = [d for d in used if not d.function]
    table = ", ".join(f"{n} = {n}" for d in functions for n in sorted(d.names))
    own = [d for d in constants if not d.names & set(LAZY_ARGS)]  # the clock: its arguments
    made = _one_line("".join(d.text for d in own + functions))
    lazy = f"local function {LAZY}({', '.join(LAZY_ARGS)}) {made} return {{{table}}} end"
    plain = _one_line(head + "".join(d.text for d in own))
    return f"{plain} {lazy} {body}"


def _load(name: str, *, lib: bool = True) -> Script:
    folder = resources.files("sessionkit") / "lua"
    source = (folder / f"{name}.lua").read_text("utf-8")
    if lib:
        source = assemble((folder / "_lib.lua").read_text("utf-8"), source)
    sha = hashlib.sha1(source.encode("utf-8")).hexdigest()
    return Script(name, source, sha)


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
        """Every script above (what `SessionStore.load_scripts` loads)."""
        return tuple(v for v in vars(cls).values() if isinstance(v, Script))


# -- one call builder per script, beside its contract in the .lua file ------


@dataclass(frozen=True)
class Settings:
    """What the scripts take from a store's settings."""

    prefix: str
    lifetime_ms: int
    idle_timeout_ms: int
    max_sessions_per_user: int
    touch_interval_ms: int
    #: The event streams' cap; 0 turns events off (and the user id is not sent).
    events_maxlen: int
    #: With an idle timeout, a read slides it only once this long has passed
    #: since the last slide (0: every read does; the near cache needs reads
    #: that do not write).
    slide_interval_ms: int = 0

    @functools.cached_property
    def get_template(self) -> Template:
        """`get`'s call with these settings' arguments packed once (it is
        the most frequent call of all). Not a field: settings are data."""
        fixed = (self.idle_timeout_ms, self.touch_interval_ms, self.slide_interval_ms)
        return Template(Scripts.get.sha, 2, 4, fixed)

    @functools.cached_property
    def buckets(self) -> tuple[tuple[str, str, str], ...]:
        """Per bucket, what every call's keys start from: the bucket's user
        prefix, its sessions' key prefix and its event stream. Made once:
        building them for each call was a quarter of a create's packing."""
        return tuple(
            (
                keys.user_prefix(self.prefix, b),
                keys.session_key(self.prefix, b, ""),
                keys.events_key(self.prefix, b),
            )
            for b in range(BUCKETS)
        )

    @functools.cached_property
    def create_template(self) -> Template:
        """`create`'s call with these settings' arguments packed once."""
        fixed = (
            self.lifetime_ms,
            self.idle_timeout_ms,
            self.max_sessions_per_user,
            self.events_maxlen,
        )
        return Template(Scripts.create.sha, 6, 12, fixed)


class Call(msgspec.Struct, frozen=True, gc=False):
    """One script call as `Transport.call` sends it: the script (its
    source goes instead if the server lost it), the cluster slot of its
    keys (which routes it on a cluster), and the call packed (an EVALSHA).
    A msgspec struct: made in C, a third of a named tuple's cost, on every
    call's path; kept out of the garbage collector, since nothing it holds
    can refer back to it."""

    script: Script
    slot: int
    payload: bytes


#: (`script_call`'s argument `keys` hides the module.)
_BUCKET_SLOTS: Final = keys.BUCKET_SLOTS
_slot_of: Final = keys.slot_of


def script_call(
    script: Script, keys: tuple[str, ...], args: tuple[Any, ...], *, bucket: int | None = None
) -> Call:
    """A call of `script` with these keys and arguments; `bucket`, the
    bucket whose keys they are, if known (its slot is then looked up)."""
    if bucket is not None:
        return Call(script, _BUCKET_SLOTS[bucket], pack_script(script.sha, keys, args))
    return Call(script, _slot_of(keys[0]) if keys else 0, pack_script(script.sha, keys, args))


def _events(s: Settings, uid: str, groups: tuple[str, ...] | None = None) -> tuple[Any, ...]:
    """The event arguments: the stream cap (0: none), then `_event_fields`."""
    return (s.events_maxlen, *_event_fields(s, uid, groups))


def _event_fields(s: Settings, uid: str, groups: tuple[str, ...] | None = None) -> tuple[Any, ...]:
    """What an event names: the user id and, for scripts that take groups,
    the groups as JSON; empty strings when events are off."""
    if not s.events_maxlen:
        return ("",) if groups is None else ("", "")
    if groups is None:
        return (uid,)
    return (uid, msgspec.json.encode(groups))


def create_call(
    s: Settings, uid: str, digest: str, bucket: int, sid: str, body: bytes, groups: tuple[str, ...]
) -> Call:
    user, sessions, events = s.buckets[bucket]
    return Call(
        Scripts.create,
        _BUCKET_SLOTS[bucket],
        s.create_template.pack(
            sessions + sid,
            *keys.user_keys(user, digest),
            user,
            events,
            sid,
            digest,
            body,
            *_event_fields(s, uid, groups),
            encode_groups(groups),
        ),
    )


def get_call(s: Settings, bucket: int, sid: str, digest: str = "") -> Call:
    """A read by session id: of this user's session (`digest`), or of
    whoever's it is (no digest: resolve)."""
    user, sessions, _ = s.buckets[bucket]
    return Call(
        Scripts.get, _BUCKET_SLOTS[bucket], s.get_template.pack(sessions + sid, user, digest, sid)
    )


#: What a token derives (`token_read`): its bucket, its session's id and
#: the call that reads the session from the token alone (resolve's).
TokenRead = tuple[int, str, Call]


def token_read(s: Settings, token: object) -> TokenRead | None:
    """A token's bucket, session id and resolve call, or None if it is not
    a well-formed token. A function of the token and the settings alone,
    never of what the server holds: a store keeps it for the tokens it saw
    recently (`SessionStore`), and it can never be stale."""
    bucket = keys.token_bucket(token)
    if bucket is None:
        return None
    assert isinstance(token, str)  # a token's bucket says so
    sid = keys.session_id(token)
    return bucket, sid, get_call(s, bucket, sid)


def list_call(s: Settings, bucket: int, digest: str) -> Call:
    user = s.buckets[bucket][0]
    return script_call(
        Scripts.list,
        (*keys.user_keys(user, digest), user),
        (),
        bucket=bucket,
    )


def delete_call(s: Settings, uid: str, digest: str, bucket: int, sid: str) -> Call:
    user, sessions, events = s.buckets[bucket]
    return script_call(
        Scripts.delete,
        (sessions + sid, *keys.user_keys(user, digest), events),
        (digest, sid, *_events(s, uid)),
        bucket=bucket,
    )


def delete_all_call(s: Settings, uid: str, digest: str, bucket: int, keep: str) -> Call:
    user, _, events = s.buckets[bucket]
    return script_call(
        Scripts.delete_all,
        (*keys.user_keys(user, digest), user, events),
        (keep, *_events(s, uid)),
        bucket=bucket,
    )


def groups_call(
    s: Settings, mode: str, uid: str, digest: str, bucket: int, groups: tuple[str, ...]
) -> Call:
    user, _, events = s.buckets[bucket]
    return script_call(
        Scripts.groups,
        (*keys.user_keys(user, digest), events),
        (mode, MAX_GROUPS_PER_SESSION, *_events(s, uid, groups), *groups),
        bucket=bucket,
    )


def read_events_args(group: str, consumer: str, count: int, ids: dict[str, str]) -> tuple[Any, ...]:
    """The cluster event read's arguments (a keyless script run per node):
    the group, the consumer, the count, then each stream and the id to read
    after."""
    args: list[Any] = [group, consumer, count]
    for name, after in ids.items():
        args += (name, after)
    return tuple(args)
