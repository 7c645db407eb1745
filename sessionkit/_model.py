"""The session object and its stored form.

`Session` is the one description of a session: Python attributes are
snake_case, and `msgspec.json.encode(session)` uses the platform's field names
(`userId`, `token`, `creationDtm`, `accessGroupKeys`, `userAgent`, ...).

The stored form is the string value laid out in ``lua/_lib.lua``: a fixed
header the scripts read and touch in place, an opaque JSON body only Python
reads (so free-form `data` round-trips exactly), and the access groups.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import Any, Final

import msgspec

from sessionkit.errors import BackendError
from sessionkit.useragent import UserAgent, parse_user_agent


class Session(
    msgspec.Struct,
    kw_only=True,
    rename={
        "user_id": "userId",
        "created_at": "creationDtm",
        "expires_at": "expiresAt",
        "last_active_at": "lastActiveAt",
        "access_groups": "accessGroupKeys",
        "user_agent": "userAgent",
    },
):
    """One user session.

    `token` is set only on the session `create` returns and on sessions read
    with their token (`get`, `resolve`); `id` is a public, non-secret handle
    that is safe to show, e.g. to let a user revoke another device.
    `expires_at` is when the session ends if it is not used again (the idle
    timeout, when set, never past the absolute lifetime).
    """

    id: str
    user_id: str
    token: str | None
    created_at: datetime
    expires_at: datetime
    last_active_at: datetime
    access_groups: list[str]
    user_agent: UserAgent | None
    data: dict[str, Any]

    def __repr__(self) -> str:
        # Logs and error trackers print objects: never the whole token.
        fields = {name: getattr(self, name) for name in self.__struct_fields__}
        if self.token is not None:
            fields["token"] = self.token[:6] + "…"
        return f"Session({', '.join(f'{k}={v!r}' for k, v in fields.items())})"

    def to_dict(self) -> dict[str, Any]:
        """The session as a JSON-ready dict in the platform's field names."""
        out: dict[str, Any] = msgspec.json.decode(msgspec.json.encode(self))
        return out


class _Body(msgspec.Struct, omit_defaults=True):
    u: str
    a: str | None = None
    d: dict[str, Any] = {}


_body_encoder = msgspec.json.Encoder()
_body_decoder = msgspec.json.Decoder(_Body)


def encode_body(user_id: str, user_agent: str | None, data: dict[str, Any]) -> bytes:
    """The opaque part of a stored session (raises msgspec errors on bad data)."""
    return _body_encoder.encode(_Body(u=user_id, a=user_agent, d=data))


def encode_groups(groups: tuple[str, ...]) -> str:
    """A session's entry in its user's groups hash: ``"\\0"``, then each
    group followed by ``"\\0"`` (groups never hold NUL), so that a script
    tells whether a session has a group with one plain search."""
    return "\0" + "\0".join(groups) + "\0" if groups else "\0"


#: The stored layout's version, the value's first byte (see ``lua/_lib.lua``).
LAYOUT = 1
#: Where each field of the stored value starts (0-based; ``lua/_lib.lua``
#: names the same places 1-based, and a test holds the two equal).
CREATED_AT, EXPIRES_AT, LAST_ACTIVE_AT, DIGEST, BODY = 1, 17, 30, 43, 65


_at = datetime.fromtimestamp

#: Stored headers whose three datetimes are kept, about 350 bytes each
#: (5.7 MB when full): the sessions a mid-sized service reads again within
#: a touch interval. In a busy process a miss costs a read 3-8 µs of CPU,
#: far more than building three datetimes alone (measured in the bench's
#: resolve over 10,000 sessions: 4,096 entries 26-31 µs per call, 16,384
#: 23-29, none 31-35).
TIMES_CACHED: Final = 16_384


@lru_cache(maxsize=TIMES_CACHED)
def _times(header: bytes) -> tuple[datetime, datetime, datetime]:
    """Creation, expiry and last-active time from a stored value's header
    (its three time fields). Cached: an app reads the same sessions again
    and again, and building three datetimes is most of decoding one; the
    header changes only when a read touches the session. Exact: a double
    holds these values to well under a microsecond."""
    at = EXPIRES_AT - CREATED_AT
    last = LAST_ACTIVE_AT - CREATED_AT
    return (
        _at(int(header[:at]) / 1e6, UTC),
        _at(int(header[at:last]) / 1e3, UTC),
        _at(int(header[last:]) / 1e3, UTC),
    )


def _decode_groups(entry: bytes) -> tuple[str, ...]:
    """The groups of a groups entry ("\\0g1\\0g2\\0": each between NULs), sorted."""
    return tuple(sorted(entry[1:-1].decode("utf-8").split("\0"))) if len(entry) > 1 else ()


#: Groups entries kept decoded, and the longest kept: an app has few
#: distinct sets of access groups, so a few entries serve almost every read
#: (decoding one was a third of decoding a session). Full, about 0.3 MB for
#: entries of a few groups each; the bound on their length keeps it under
#: 6 MB at worst (every entry a hundred two-letter groups).
GROUPS_CACHED: Final = 1024
GROUPS_CACHED_BYTES: Final = 256
_cached_groups = lru_cache(maxsize=GROUPS_CACHED)(_decode_groups)


def decode_session(
    raw: bytes | str,
    groups_entry: bytes | str | None,
    sid: str,
    token: str | None,
    idle_timeout_ms: int,
) -> Session:
    """Build a `Session` from its stored value and its entry in the user's
    groups hash (the scripts return only values of this layout). Without
    `groups_entry`, `raw` is the one string get.lua and create.lua reply:
    the value, then its entry from the first NUL (a value's header and JSON
    body hold none); the two are read where they lie, not split first."""
    if isinstance(raw, str):
        raw = raw.encode("utf-8")
    if raw[0] != LAYOUT:
        raise BackendError(
            f"a stored session of layout {raw[0]}; this sessionkit reads layout {LAYOUT}",
            details={"layout": raw[0]},
        )
    if groups_entry is None:
        end = raw.find(b"\0", BODY)
        if end < 0:
            raise BackendError("a session read without its groups entry", details={})
        entry = raw[end:]
    else:
        end = len(raw)
        entry = groups_entry.encode("utf-8") if isinstance(groups_entry, str) else groups_entry
    created, expires, last = _times(raw[CREATED_AT:DIGEST])
    if idle_timeout_ms:
        expires = min(expires, last + timedelta(milliseconds=idle_timeout_ms))
    body = _body_decoder.decode(raw[BODY:end])
    groups = _cached_groups(entry) if len(entry) <= GROUPS_CACHED_BYTES else _decode_groups(entry)
    return Session(
        id=sid,
        user_id=body.u,
        token=token,
        created_at=created,
        expires_at=expires,
        last_active_at=last,
        access_groups=list(groups),
        user_agent=parse_user_agent(body.a) if body.a is not None else None,
        data=body.d,
    )


def unpack_listing(reply: list[Any]) -> Iterator[tuple[str, bytes, bytes]]:
    """(session id, value, groups entry) of each session in the list
    script's reply: the user's groups hash as (id, entry) pairs, then the
    sessions' values in the same order, in batches. A session whose key is
    gone (None) or whose value is of another layout is left out."""
    pairs = reply[0]
    values = [v for batch in reply[1:] for v in batch]
    for n, value in enumerate(values):
        if not value:
            continue
        if isinstance(value, str):
            value = value.encode("utf-8")
        if value[0] != LAYOUT:
            continue
        sid, entry = pairs[2 * n], pairs[2 * n + 1]
        yield (
            sid.decode("ascii") if isinstance(sid, bytes) else sid,
            value,
            entry.encode("utf-8") if isinstance(entry, str) else entry,
        )
