"""sessionkit: an async, Redis-native session engine.

One atomic Lua round trip per operation, every key of a user in one Redis
Cluster hash slot, tokens never stored in the clear.
"""

from sessionkit._model import Session
from sessionkit.errors import (
    BackendError,
    BackendTimeout,
    BackendUnavailable,
    LimitExceeded,
    SessionKitError,
    ValidationError,
)
from sessionkit.nearcache import NearCache, NearCacheStats
from sessionkit.store import SessionStore
from sessionkit.useragent import UserAgent

__all__ = [
    "BackendError",
    "BackendTimeout",
    "BackendUnavailable",
    "LimitExceeded",
    "NearCache",
    "NearCacheStats",
    "Session",
    "SessionKitError",
    "SessionStore",
    "UserAgent",
    "ValidationError",
]
__version__ = "0.1.0"
