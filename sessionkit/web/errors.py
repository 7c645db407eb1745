"""The web layer's errors, in the platform's error shape."""

from __future__ import annotations

from starlette.responses import JSONResponse

from sessionkit.errors import SessionKitError


class MiddlewareMissing(SessionKitError):
    """A helper or guard ran on a request that `SessionMiddleware` did not see."""

    code = "middleware_missing"
    origin = "server"


class AccessDenied(SessionKitError):
    """No valid session (401) or a missing access group (403)."""

    origin = "client"

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message, code=code)
        self.status = status

    def response(self) -> JSONResponse:
        """The platform's error body: ``{"errors": [{origin, code, message}]}``."""
        entry = {"origin": self.origin, "code": self.code, "message": self.message}
        return JSONResponse({"errors": [entry]}, status_code=self.status)
