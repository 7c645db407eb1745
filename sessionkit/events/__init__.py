"""Session events: read what happened to sessions, without loss.

Every change the store makes (a session created, deleted, all of a user's
deleted, evicted by ``max_sessions_per_user``, access groups added or
removed) appends one entry to a Redis Stream *inside the Lua script that
makes the change*, so an event exists if and only if its change does (a
change to more sessions than one 64 KiB entry holds appends several). A
change that touches no session (deleting an unknown token, adding a group
every session already has) writes none. Expiry writes none either: a
session's ``expires_at`` says when it ends, so a consumer that needs to act
then can schedule it.

Layout. A script may only touch keys in its user's hash slot,
so each bucket (see `sessionkit._keys`) has its own stream,
``<prefix>:{<tag>}:events``: 1,024 streams per prefix. Events of one user
are in one stream, in order; events of different users are ordered by time
only as far as the server clock goes (a batch is sorted by entry id). On one
server a consumer reads all streams with one blocking command; on a cluster
it calls one script per node that reads that node's streams (the one script
flagged ``allow-cross-slot-keys``), and polls. Each
stream is capped (``XADD MAXLEN ~``, the store's ``events_maxlen``): a
consumer that stays away longer than the cap lasts misses the oldest events.

`EventConsumer` reads as one consumer of a Redis consumer group: each event
goes to one consumer of the group, stays pending until acknowledged, and a
consumer that restarts under the same name first gets back what it had not
acknowledged, then everything that happened while it was away. `tail`
follows the streams without a group (nothing to acknowledge, nothing kept).
"""

from sessionkit.events._consumer import EventConsumer
from sessionkit.events._entries import EVENT_TYPES, Event, EventType, GroupStatus
from sessionkit.events._tail import tail

__all__ = ["EVENT_TYPES", "Event", "EventConsumer", "EventType", "GroupStatus", "tail"]
