"""Key prefixes, default lifetimes and input limits, in one place."""

from __future__ import annotations

from typing import Final

#: Prefix of every key sessionkit writes; several apps can share one server.
PREFIX: Final = "sk"

#: Absolute lifetime of a session, seconds (14 days).
LIFETIME: Final = 14 * 86400

#: Without an idle timeout, last-active time is rewritten at most this often
#: (seconds), so that a busy session does not cost a write per request.
TOUCH_INTERVAL: Final = 60

#: Cluster hash-tag buckets a user can fall in: each is one Redis Cluster
#: slot and one event stream (see `sessionkit._keys` for the trade-off). Part
#: of the key layout: changing it orphans existing sessions.
BUCKETS: Final = 1024

#: Events each bucket's stream keeps, about (``XADD MAXLEN ~``): in all, up to
#: about BUCKETS * EVENTS_MAXLEN events wait for consumers.
EVENTS_MAXLEN: Final = 1000
MAX_EVENTS_MAXLEN: Final = 1_000_000

#: Largest user id, in UTF-8 bytes.
MAX_USER_ID_BYTES: Final = 1024

#: Sessions one user may have by default, and the range of
#: `max_sessions_per_user`: a create at the cap evicts the user's oldest.
#: The hard maximum bounds what one user's list, group change or delete_all
#: costs every other user of the server (see the README's Guarantees).
MAX_SESSIONS_PER_USER: Final = 100
MAX_SESSIONS_PER_USER_LIMIT: Final = 10_000

#: Largest access group key, in UTF-8 bytes; most access groups on one
#: session, and in one call.
MAX_GROUP_BYTES: Final = 256
MAX_GROUPS_PER_SESSION: Final = 256
MAX_GROUPS: Final = 256

#: Largest set of access groups in one call, JSON-encoded: the groups travel
#: in the call's event, whose entries are at most EVENT_BYTES.
MAX_GROUPS_JSON_BYTES: Final = 32 * 1024

#: Largest event stream entry; a change to more sessions than fit in one
#: writes several (see ``lua/_lib.lua``).
EVENT_BYTES: Final = 64 * 1024

#: Largest `data` map, JSON-encoded.
MAX_DATA_BYTES: Final = 64 * 1024

#: User agent strings are cut to this many characters before they are stored.
MAX_USER_AGENT_CHARS: Final = 512

#: Longest accepted key prefix.
MAX_PREFIX_CHARS: Final = 64

#: Connections a store made by `SessionStore.from_url` keeps at most; callers
#: past that wait for a free one (up to POOL_TIMEOUT seconds) instead of failing.
POOL_SIZE: Final = 64
POOL_TIMEOUT: Final = 10.0

#: Most nodes in one flow, and the longest parameter expression (UTF-8
#: bytes): flows are code, but a definition must not be able to exhaust the
#: process that loads it.
MAX_FLOW_NODES: Final = 1000
MAX_EXPRESSION_BYTES: Final = 4096
#: How deep CEL comprehensions (map, filter, all, exists) may nest in one
#: expression: each level multiplies its cost.
MAX_COMPREHENSION_DEPTH: Final = 2
#: What one evaluation of an expression with comprehensions may cost, in
#: steps of the CEL evaluator: macros * n ** (depth + 1), n being the largest
#: list or map it could iterate (in the inputs, or written in the
#: expression). The evaluator's comprehensions are quadratic in n (they copy
#: as they go), and it holds the GIL, so this bounds how long one node can
#: stall the event loop: about 40 to 50 ms on the development machine.
MAX_COMPREHENSION_STEPS: Final = 1_000_000
