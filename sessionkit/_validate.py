"""Checks on caller input: each raises `ValidationError` with a message a user
can act on, before anything is sent to the server."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from datetime import timedelta
from typing import Any

import msgspec

from sessionkit.defaults import (
    MAX_DATA_BYTES,
    MAX_GROUP_BYTES,
    MAX_GROUPS,
    MAX_GROUPS_JSON_BYTES,
    MAX_PREFIX_CHARS,
    MAX_SESSIONS_PER_USER_LIMIT,
    MAX_USER_AGENT_CHARS,
    MAX_USER_ID_BYTES,
)
from sessionkit.errors import LimitExceeded, ValidationError


def _utf8(value: str, what: str) -> bytes:
    try:
        return value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValidationError(
            f"{what} is not valid Unicode text (it holds a lone surrogate)",
            details={"parameter": what},
        ) from exc


def user_id(value: object) -> str:
    """A user id: non-empty text of at most 1 KiB (UTF-8), any characters."""
    if not isinstance(value, str):
        raise ValidationError(
            f"user_id must be text, got {type(value).__name__}",
            details={"parameter": "user_id", "type": type(value).__name__},
        )
    if not value:
        raise ValidationError("user_id must not be empty", details={"parameter": "user_id"})
    size = len(_utf8(value, "user_id"))
    if size > MAX_USER_ID_BYTES:
        raise ValidationError(
            f"user_id is {size} bytes long; at most {MAX_USER_ID_BYTES} are allowed",
            details={"parameter": "user_id", "bytes": size},
        )
    return value


def groups(value: object, what: str = "groups") -> tuple[str, ...]:
    """One access group key or an iterable of them, each non-empty text."""
    items: Iterable[object]
    if isinstance(value, str):
        items = (value,)
    elif type(value) is list or type(value) is tuple:  # the common case, without ABC checks
        items = value
    elif isinstance(value, (bytes, bytearray, Mapping)) or not isinstance(value, Iterable):
        raise ValidationError(
            f"{what} must be a text or a list of texts, got {type(value).__name__}",
            details={"parameter": what, "type": type(value).__name__},
        )
    else:
        items = value
    out: dict[str, None] = {}
    for g in items:
        if not isinstance(g, str):
            raise ValidationError(
                f"every entry of {what} must be text, got {type(g).__name__}",
                details={"parameter": what, "type": type(g).__name__},
            )
        if not g:
            raise ValidationError(
                f"{what} holds an empty access group key", details={"parameter": what}
            )
        if "\0" in g:
            raise ValidationError(
                f"an access group key in {what} holds a NUL character",
                details={"parameter": what},
            )
        if len(_utf8(g, what)) > MAX_GROUP_BYTES:
            raise ValidationError(
                f"an access group key in {what} is over {MAX_GROUP_BYTES} bytes",
                details={"parameter": what},
            )
        out[g] = None
        if len(out) > MAX_GROUPS:
            raise LimitExceeded(
                f"{what} holds more than {MAX_GROUPS} distinct access group keys",
                details={"parameter": what, "limit": "groups_per_call", "maximum": MAX_GROUPS},
            )
    distinct = tuple(out)
    size = len(msgspec.json.encode(distinct))
    if size > MAX_GROUPS_JSON_BYTES:
        raise LimitExceeded(
            f"the access group keys in {what} are {size} bytes as JSON; at most "
            f"{MAX_GROUPS_JSON_BYTES} are allowed in one call",
            details={
                "parameter": what,
                "limit": "group_bytes_per_call",
                "maximum": MAX_GROUPS_JSON_BYTES,
            },
        )
    return distinct


_MAX_DEPTH = 64


def _json_path(value: object, path: str, depth: int) -> str | None:
    """Where `value` stops being plain JSON (dict/list/str/int/float/bool/None), or None."""
    if depth > _MAX_DEPTH:
        return f"{path} (nested deeper than {_MAX_DEPTH})"
    if value is None or isinstance(value, (str, bool, int)):
        return None
    if isinstance(value, float):
        return None if math.isfinite(value) else f"{path} (a non-finite float)"
    if isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, str):
                return f"{path} (a {type(k).__name__} key)"
            bad = _json_path(v, f"{path}.{k}", depth + 1)
            if bad:
                return bad
        return None
    if isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            bad = _json_path(v, f"{path}[{i}]", depth + 1)
            if bad:
                return bad
        return None
    return f"{path} (a {type(value).__name__})"


def data(value: object) -> dict[str, Any]:
    """Free-form session data: a JSON map with text keys, at most 64 KiB encoded.

    Only plain JSON values are accepted, so what is read back equals what was
    stored (tuples come back as lists).
    """
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ValidationError(
            f"data must be a dict, got {type(value).__name__}",
            details={"parameter": "data", "type": type(value).__name__},
        )
    bad = _json_path(value, "data", 0)
    if bad:
        raise ValidationError(f"data is not plain JSON at {bad}", details={"parameter": "data"})
    try:
        encoded = msgspec.json.encode(value)
    except (msgspec.EncodeError, UnicodeError) as exc:
        raise ValidationError(
            f"data is not JSON-encodable: {exc}", details={"parameter": "data"}
        ) from exc
    if len(encoded) > MAX_DATA_BYTES:
        raise ValidationError(
            f"data is {len(encoded)} bytes as JSON; at most {MAX_DATA_BYTES} are allowed",
            details={"parameter": "data", "bytes": len(encoded)},
        )
    return value


def user_agent(value: object) -> str | None:
    """A raw User-Agent string (cut to a sane length), or None."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValidationError(
            f"user_agent must be text, got {type(value).__name__}",
            details={"parameter": "user_agent", "type": type(value).__name__},
        )
    value = value[:MAX_USER_AGENT_CHARS]
    _utf8(value, "user_agent")
    return value


def duration_ms(value: object, what: str, *, optional: bool = False) -> int:
    """Seconds (int/float) or a timedelta, as whole milliseconds > 0 (0 = None if optional)."""
    if value is None and optional:
        return 0
    if isinstance(value, timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = float(value)
    else:
        raise ValidationError(
            f"{what} must be seconds (int or float) or a timedelta, got {type(value).__name__}",
            details={"parameter": what},
        )
    if not math.isfinite(seconds) or seconds <= 0:
        raise ValidationError(
            f"{what} must be positive, got {value!r}", details={"parameter": what}
        )
    ms = math.ceil(seconds * 1000)
    if ms > 100 * 365 * 86400 * 1000:
        raise ValidationError(f"{what} is over 100 years", details={"parameter": what})
    return ms


def int_in_range(value: object, what: str, low: int, high: int) -> int:
    """An int from `low` to `high`; anything else (None, a bool, a float) is
    refused with the range in the message."""
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ValidationError(
            f"{what} must be an int from {low:,} to {high:,}, got {value!r}",
            details={"parameter": what, "minimum": low, "maximum": high},
        )
    return value


def max_sessions_per_user(value: object) -> int:
    """The per-user session cap: 1 to MAX_SESSIONS_PER_USER_LIMIT."""
    return int_in_range(value, "max_sessions_per_user", 1, MAX_SESSIONS_PER_USER_LIMIT)


def prefix(value: object) -> str:
    """A key prefix: non-empty text without braces (they would change the hash tag)."""
    if not isinstance(value, str) or not value:
        raise ValidationError("prefix must be non-empty text", details={"parameter": "prefix"})
    if "{" in value or "}" in value:
        raise ValidationError(
            "prefix must not contain '{' or '}': they would move keys off the user's hash slot",
            details={"parameter": "prefix"},
        )
    if len(value) > MAX_PREFIX_CHARS or not value.isprintable():
        raise ValidationError(
            f"prefix must be printable and at most {MAX_PREFIX_CHARS} characters",
            details={"parameter": "prefix"},
        )
    return value
