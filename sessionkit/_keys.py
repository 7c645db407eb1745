"""Tokens, digests and the key layout.

Every key of one user is ``<prefix>:{<tag>}:...``. The part in braces is the
Redis Cluster hash tag: Redis hashes only that part, so all of a user's keys
live in one slot and every per-user Lua script is legal on a cluster. The tag
is a bucket number (0..1023) taken from a BLAKE2b digest of the user id, never the id
itself, so no user id, whatever characters it holds (``{``, ``}``, ``:``, ...),
can shape another user's key names:

* ``<prefix>:{<tag>}:s:<session id>``  the session (a string value); the
  session id is the bucket and a digest of the token
* ``<prefix>:{<tag>}:u:<user digest>`` the user's index (a sorted set of
  session ids scored by expiry: what is live)
* ``<prefix>:{<tag>}:c:<user digest>`` the user's order (the same ids scored
  by creation time: whom a create at the cap evicts)
* ``<prefix>:{<tag>}:g:<user digest>`` the user's groups (a hash: session id
  to that session's access groups)
* ``<prefix>:{<tag>}:events``          the bucket's event stream (see
  `sessionkit.events`): written by the same script as the change it reports,
  so it must share the users' slot
* ``<prefix>:{<tag>}:events:n``        the number of the stream's last entry
  (a string beside the stream, so that a script numbers an entry without
  reading the stream back; see ``lua/_lib.lua``)

The bucket count is a trade-off: each bucket is one slot, so more buckets
spread users more finely over a cluster's nodes, and fewer buckets mean fewer
event streams for a consumer to read. 1,024 spreads well over clusters of up
to a few dozen primaries and keeps a consumer's read to one command per node.

A token is 34 random-looking bytes, URL-safe base64: two bytes naming the
bucket (so a token alone finds its slot) and 32 bytes (256 bits) from
`secrets`. Redis never sees the token, only its BLAKE2b digest (the session
id), so a dump of Redis gives no working token. The bucket is one of 1,024
values shared by every user who hashes to it; it says nothing readable about
its user.
"""

from __future__ import annotations

import binascii
import functools
import hashlib
import re
import secrets
from typing import Final

from redis.crc import key_slot

from sessionkit.defaults import BUCKETS

TOKEN_RANDOM_BYTES: Final = 32
TOKEN_CHARS: Final = 46  # base64url of 2 + 32 bytes, unpadded
DIGEST_CHARS: Final = 22  # base64url of 16 bytes, unpadded
SESSION_ID_CHARS: Final = 24  # base64url of the 2-byte bucket + a 16-byte token digest
_B64URL: Final = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
#: A string of base64url characters only (an explicit class: ASCII alone).
_BASE64URL: Final = re.compile(r"[A-Za-z0-9_-]*")
#: The digests: BLAKE2b (RFC 7693), personalised per use so that a token
#: and a user id never share a digest. A cryptographic hash like SHA-256,
#: at under half the cost here (OpenSSL's SHA-256 goes through its EVP
#: layer); a token's is on every call's path. Copied per token.
_TOKEN_HASH: Final = hashlib.blake2b(digest_size=16, person=b"sessionkit-token")
_USER_HASH: Final = hashlib.blake2b(digest_size=18, person=b"sessionkit-user")
#: Each base64url character's six bits (the first three characters of a
#: token or session id hold its bucket's 16 bits).
_SEXTET: Final = {c: i for i, c in enumerate(_B64URL)}
_TO_URLSAFE: Final = bytes.maketrans(b"+/", b"-_")


def _b64(raw: bytes) -> str:
    """Unpadded base64url (what `base64.urlsafe_b64encode` gives, without
    its layers of checks: this is on every call's path)."""
    return binascii.b2a_base64(raw, newline=False).translate(_TO_URLSAFE).rstrip(b"=").decode()


def user_digest(user_id: str) -> tuple[str, int]:
    """The user's digest (used in key names) and hash-tag bucket."""
    h = _USER_HASH.copy()
    h.update(user_id.encode("utf-8"))
    d = h.digest()
    return _b64(d[:16]), int.from_bytes(d[16:18], "big") % BUCKETS


def new_token(bucket: int) -> str:
    """A fresh token for a user in `bucket`."""
    return _b64(bucket.to_bytes(2, "big") + secrets.token_bytes(TOKEN_RANDOM_BYTES))


def _bucket_of(value: object, chars: int) -> int | None:
    """The bucket named by the first two bytes of a token or session id
    (`chars` long, base64url), or None if `value` is not one."""
    if not isinstance(value, str) or len(value) != chars:
        return None
    if _BASE64URL.fullmatch(value) is None:
        return None
    bucket = _head(value)
    return bucket if bucket < BUCKETS else None


def _head(value: str) -> int:
    """The first two bytes a base64url string encodes, as a number."""
    return (_SEXTET[value[0]] << 10) | (_SEXTET[value[1]] << 4) | (_SEXTET[value[2]] >> 2)


def token_bucket(token: object) -> int | None:
    """The bucket a token names, or None if it is not a well-formed token."""
    return _bucket_of(token, TOKEN_CHARS)


def session_id(token: str) -> str:
    """The public, non-secret id of a well-formed token's session: the
    token's bucket and a digest of the token. It finds the session (in the
    user's hash slot) but cannot be turned back into a token."""
    h = _TOKEN_HASH.copy()
    h.update(token.encode("ascii"))
    return _b64(_head(token).to_bytes(2, "big") + h.digest())


def session_id_bucket(value: object) -> int | None:
    """The bucket a session id names, or None if it is not a well-formed id."""
    return _bucket_of(value, SESSION_ID_CHARS)


@functools.lru_cache(maxsize=4096)
def user_prefix(prefix: str, bucket: int) -> str:
    """``<prefix>:{<tag>}:``, the start of every key of the users in `bucket`."""
    return f"{prefix}:{{{bucket:04x}}}:"


#: Each bucket's Redis Cluster slot (its hash tag's): a call routes by a
#: lookup here, not by hashing its key again.
BUCKET_SLOTS: Final = tuple(key_slot(f"{b:04x}".encode()) for b in range(BUCKETS))


@functools.lru_cache(maxsize=4096)
def _tag_slot(tag: str) -> int:
    return key_slot(tag.encode())


def slot_of(key: str) -> int:
    """The cluster slot of any key, as the server computes it (a key of
    sessionkit's layout: its bucket's, `BUCKET_SLOTS`)."""
    start = key.find("{")
    if start >= 0:
        end = key.find("}", start + 1)
        if end > start + 1:
            return _tag_slot(key[start + 1 : end])
    return key_slot(key.encode())


def session_key(prefix: str, bucket: int, sid: str) -> str:
    return f"{user_prefix(prefix, bucket)}s:{sid}"


def user_keys(start: str, digest: str) -> tuple[str, str, str]:
    """The user's index, order and groups keys (`index_key`, `order_key`,
    `groups_key`; a test holds them equal), from the user's digest and
    `start`, the `user_prefix` of the user's bucket (built once for every
    call that takes them)."""
    return f"{start}u:{digest}", f"{start}c:{digest}", f"{start}g:{digest}"


def index_key(prefix: str, bucket: int, digest: str) -> str:
    return f"{user_prefix(prefix, bucket)}u:{digest}"


def order_key(prefix: str, bucket: int, digest: str) -> str:
    return f"{user_prefix(prefix, bucket)}c:{digest}"


def groups_key(prefix: str, bucket: int, digest: str) -> str:
    return f"{user_prefix(prefix, bucket)}g:{digest}"


def events_key(prefix: str, bucket: int) -> str:
    return f"{user_prefix(prefix, bucket)}events"


def event_streams(prefix: str) -> tuple[str, ...]:
    """Every event stream of a key prefix, one per bucket."""
    return tuple(events_key(prefix, b) for b in range(BUCKETS))
