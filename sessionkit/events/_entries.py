"""Event entries: their types, and how replies of the server become them."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from typing import Any, Final, Literal

import msgspec

from sessionkit.errors import BackendError, SessionKitError, ValidationError

EventType = Literal[
    "created", "deleted", "all_deleted", "evicted", "groups_added", "groups_removed"
]
EVENT_TYPES: Final = frozenset(EventType.__args__)  # type: ignore[attr-defined]

_MAX_NAME = 200


class Event(msgspec.Struct, frozen=True, kw_only=True):
    """One change to one user's sessions.

    `session_ids` are public session ids (`Session.id`), never tokens;
    `groups` are the access groups the change was asked for (created with,
    added, removed); `at` is the server time of the change, taken from the
    stream entry id. `id` and `stream` name the entry, for acknowledging it.
    """

    type: str
    user_id: str
    session_ids: tuple[str, ...]
    groups: tuple[str, ...]
    at: datetime
    id: str
    stream: str


class GroupStatus(msgspec.Struct, frozen=True, kw_only=True):
    """Where a consumer group stands, over every stream of a prefix.

    `pending`: delivered to a consumer, not yet acknowledged. `undelivered`:
    still in the streams, not yet delivered to the group. `lost`: events the
    group fell so far behind on (more than ``events_maxlen``) that the
    streams trimmed them before it read them; `lost_streams` names those
    streams. Counts are None where a stream cannot tell (entries deleted in
    its middle by hand).
    """

    group: str
    pending: int
    undelivered: int | None
    lost: int | None
    lost_streams: tuple[str, ...]


def _fields(reply: Any) -> dict[str, Any]:
    """An XINFO reply as a dict with text keys (redis-py gives a flat list or a dict)."""
    if isinstance(reply, list):
        reply = dict(zip(reply[::2], reply[1::2], strict=True))
    return {_text(k): v for k, v in reply.items()}


def _seq(entry_id: bytes | str) -> int:
    """An entry's number in its stream: sessionkit writes ids ``<ms>-<n>``
    with n counting the stream's entries from 1 (see ``lua/_lib.lua``)."""
    return _id(entry_id)[1]


def _standing(stream: dict[str, Any], group: dict[str, Any]) -> tuple[int, int]:
    """(undelivered, lost) of one group on one stream, from entry numbers
    alone: exact on every server, whatever the group's ``entries-read``
    says (Redis 7.0 miscounts it once a read skips trimmed entries; it is
    null for a group that has not read yet)."""
    position = _seq(group["last-delivered-id"])
    last = _seq(stream["last-generated-id"])
    first_entry = stream.get("first-entry")
    first = _seq(first_entry[0]) if first_entry else last + 1
    return last - max(position, first - 1), max(0, first - 1 - position)


def _id(value: bytes | str) -> tuple[int, int]:
    """A stream entry id as numbers, for ordering: ``"1700000000000-3"`` → (1700000000000, 3)."""
    ms, _, seq = _text(value).partition("-")
    return int(ms), int(seq or 0)


def _text(value: bytes | str) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


def _event(stream: str, entry_id: str, fields: dict[Any, Any]) -> Event:
    f = {_text(k): _text(v) for k, v in fields.items()}
    try:
        groups = tuple(msgspec.json.decode(f.get("groups") or "[]", type=list[str]))
    except msgspec.DecodeError:
        groups = ()
    return Event(
        type=f.get("type", ""),
        user_id=f.get("user", ""),
        session_ids=tuple(f.get("sessions", "").split()),
        groups=groups,
        at=datetime.fromtimestamp(_id(entry_id)[0] / 1000, UTC),
        id=entry_id,
        stream=stream,
    )


def _entry_key(event: Event) -> tuple[int, int]:
    return _id(event.id)


def _name(value: object, what: str) -> str:
    if not isinstance(value, str) or not value or len(value) > _MAX_NAME:
        raise ValidationError(
            f"{what} must be a non-empty text of at most {_MAX_NAME} characters, got {value!r}",
            details={"parameter": what},
        )
    return value


def _seconds(value: float | timedelta, what: str) -> float:
    seconds = value.total_seconds() if isinstance(value, timedelta) else value
    if (
        isinstance(seconds, bool)
        or not isinstance(seconds, (int, float))
        or not (0 < seconds < math.inf)
    ):
        raise ValidationError(
            f"{what} must be a positive number of seconds or a timedelta, got {value!r}",
            details={"parameter": what},
        )
    return float(seconds)


def _entries(reply: Any, gone: list[tuple[str, str]] | None = None) -> list[Event]:
    """Events out of an XREAD/XREADGROUP reply (a list, or redis-py's RESP3
    map). Pending entries the stream no longer holds (trimmed before they
    were acknowledged) come with no fields: they are added to `gone`."""
    if not reply:
        return []
    pairs = reply.items() if isinstance(reply, dict) else reply
    out: list[Event] = []
    for stream, entries in pairs:
        name = _text(stream)
        if len(entries) == 1 and isinstance(entries[0], list):
            inner = entries[0]
            if not inner or isinstance(inner[0], tuple):
                entries = inner  # redis-py's RESP3 shape wraps the entries once more
        for entry_id, fields in entries:
            if not fields:
                if gone is not None and entry_id is not None:
                    gone.append((name, _text(entry_id)))
                continue
            if not isinstance(fields, dict):  # a script's reply: a flat list
                fields = dict(zip(fields[::2], fields[1::2], strict=True))
            out.append(_event(name, _text(entry_id), fields))
    return out


def _check(reply: Any, what: str) -> Any:
    """A reply of `_Streams.run`, or the typed error it stands for."""
    if isinstance(reply, SessionKitError):
        raise reply
    if isinstance(reply, Exception):
        raise BackendError(
            f"the session server refused {what}: {reply}", details={"operation": "events"}
        ) from reply
    return reply
