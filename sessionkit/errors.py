"""The exception hierarchy: one root, a few precise subclasses.

Every error carries the platform's error-entry shape (`origin`, `code`,
`message`, `details`), so nodes can emit it on their `errors` link point as is.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from starlette.responses import JSONResponse

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


class BackendTimeout(BackendUnavailable):
    """The server did not answer within the socket timeout (paused, overloaded,
    a long script of someone else's); the call may still have been applied."""

    code = "backend_timeout"


class BackendError(SessionKitError):
    """The server answered with an error (out of memory, read-only replica, ...)."""

    code = "backend_error"
    origin = "server"


class ServerError(SessionKitError):
    """An embedded server could not be found or started."""

    code = "server_error"
    origin = "server"


class ExpressionError(ValidationError):
    """A parameter expression does not compile, or fails on the given inputs."""

    code = "expression_error"


class NodeError(SessionKitError):
    """An unexpected failure inside a node, reported as an error entry."""

    code = "internal_error"
    origin = "server"


class FlowDefinitionError(ValidationError):
    """A flow definition that cannot run: the message names the culprit."""

    code = "invalid_flow"


class FlowError(SessionKitError):
    """A node with automatic error management failed; the flow stopped."""

    def __init__(self, node: str, entries: list[dict[str, Any]], cause: SessionKitError) -> None:
        super().__init__(
            f"node {node!r} failed: {cause.message}",
            code=cause.code,
            origin=cause.origin,
            details={"node": node, "errors": entries},
        )
        self.node = node
        self.errors = entries
        self.__cause__ = cause


class MiddlewareMissing(SessionKitError):
    """A web helper or guard ran on a request that `SessionMiddleware` did not see."""

    code = "middleware_missing"
    origin = "server"


class AccessDenied(SessionKitError):
    """No valid session (401) or a missing access group (403)."""

    origin = "client"

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message, code=code)
        self.status = status

    def response(self) -> JSONResponse:
        """The platform's error body, ``{"errors": [{origin, code, message}]}``,
        as a Starlette `JSONResponse` (the web extra)."""
        from starlette.responses import JSONResponse

        entry = {"origin": self.origin, "code": self.code, "message": self.message}
        return JSONResponse({"errors": [entry]}, status_code=self.status)


__all__ = [
    "AccessDenied",
    "BackendError",
    "BackendTimeout",
    "BackendUnavailable",
    "ExpressionError",
    "FlowDefinitionError",
    "FlowError",
    "LimitExceeded",
    "MiddlewareMissing",
    "NodeError",
    "Origin",
    "ServerError",
    "SessionKitError",
    "ValidationError",
]
