"""The exception hierarchy: one root, a few precise subclasses.

Every error carries the platform's error-entry shape (`origin`, `code`,
`message`, `details`), so nodes can emit it on their `errors` link point as is.
"""

from __future__ import annotations

from typing import Any, Literal

Origin = Literal["client", "server"]


class SessionKitError(Exception):
    """Root of every error sessionkit raises."""

    code: str = "session_error"
    origin: Origin = "server"

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        origin: Origin | None = None,
        details: Any = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        if origin is not None:
            self.origin = origin
        self.details = details

    def to_entry(self) -> dict[str, Any]:
        """The platform's error entry: `{origin, code, message, details}`."""
        return {
            "origin": self.origin,
            "code": self.code,
            "message": self.message,
            "details": self.details,
        }


class ValidationError(SessionKitError, ValueError):
    """Bad input from the caller; raised before anything is written."""

    code = "validation_error"
    origin = "client"


class LimitExceeded(ValidationError):
    """The call would go past one of sessionkit's caps; nothing was changed.
    `details` names the limit (``"groups_per_session"``, ``"groups_per_call"``,
    ``"group_bytes_per_call"``) and its ``maximum``."""

    code = "limit_exceeded"


class BackendUnavailable(SessionKitError):
    """The server could not be reached or did not answer in time."""

    code = "backend_unavailable"
    origin = "server"


class BackendError(SessionKitError):
    """The server answered with an error (out of memory, read-only replica, ...)."""

    code = "backend_error"
    origin = "server"
