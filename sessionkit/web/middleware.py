"""`SessionMiddleware`: resolves the request's session from its token, in one
round trip, and writes cookies only when a helper changed the session."""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

from starlette.responses import JSONResponse

from sessionkit._model import Session
from sessionkit.errors import BackendUnavailable
from sessionkit.store import SessionStore
from sessionkit.web.errors import AccessDenied
from sessionkit.web.types import ASGIApp, Message, Receive, Scope, Send

SameSite = Literal["lax", "strict", "none"]
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})
SCOPE_KEY = "sessionkit"


@dataclass
class SessionState:
    """What the middleware knows about one request (``scope["sessionkit"]``)."""

    middleware: SessionMiddleware
    token: str | None
    session: Session | None
    #: A Set-Cookie header value to add to the response, set by the helpers.
    cookie: str | None = None
    #: The request came cross-site with our cookie on an unsafe method: its
    #: token was not used (the platform routes answer 403 csrf_rejected).
    csrf_rejected: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def store(self) -> SessionStore:
        return self.middleware.store


class SessionMiddleware:
    """Plain ASGI session middleware (Starlette, FastAPI, Litestar, bare ASGI).

    The token comes from the ``header_name`` request header (the platform's
    ``Session`` header) or, failing that, from the ``cookie_name`` cookie. It
    is resolved with one `SessionStore.resolve`; `get_session(request)` gives
    the session (or None). The middleware writes only ``scope["sessionkit"]``:
    ``scope["session"]`` is Starlette's cookie-session dict, which other
    middleware (OAuth clients) may need beside this one. No token, or a dead
    one, means no session, never an error. A request that changes nothing
    writes nothing and sets no cookie.
    """

    def __init__(
        self,
        app: ASGIApp,
        store: SessionStore,
        *,
        header_name: str = "Session",
        cookie_name: str | None = None,
        secure: bool = True,
        same_site: SameSite = "lax",
        cookie_path: str = "/",
        cookie_domain: str | None = None,
        trusted_origins: Iterable[str] = (),
    ) -> None:
        self.app = app
        self.store = store
        self.header = header_name.lower().encode("latin-1")
        if cookie_name is None:
            # A __Host- cookie is refused by browsers unless it is Secure,
            # for Path=/ and without Domain: no sibling subdomain can set it.
            host_only = secure and cookie_domain is None and cookie_path == "/"
            cookie_name = "__Host-sessionkit" if host_only else "sessionkit"
        self.cookie_name = cookie_name
        self._cookie_key = cookie_name.encode("latin-1")
        self.secure = secure
        self.same_site = same_site
        self.cookie_path = cookie_path
        self.cookie_domain = cookie_domain
        self.trusted_origins = frozenset(o.rstrip("/").lower() for o in trusted_origins)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        token, from_cookie = self._token(scope)
        csrf = from_cookie and scope["type"] == "http" and self._cross_site_write(scope)
        if csrf:
            token = None  # a browser sent our cookie along with another site's request
        try:
            session = await self.store.resolve(token) if token else None
        except BackendUnavailable as exc:
            await _unavailable(exc, scope, receive, send)
            return
        state = SessionState(self, token, session, csrf_rejected=csrf)
        scope[SCOPE_KEY] = state

        async def send_with_cookie(message: Message) -> None:
            if message["type"] == "http.response.start" and state.cookie is not None:
                headers = list(message.get("headers", []))
                headers.append((b"set-cookie", state.cookie.encode("latin-1")))
                message = {**message, "headers": headers}
            await send(message)

        started = False

        async def send_tracked(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send_with_cookie(message)

        try:
            await self.app(scope, receive, send_tracked)
        except AccessDenied as denied:  # raised by a guard used as a dependency
            if started or scope["type"] != "http":
                raise
            await denied.response()(scope, receive, send_with_cookie)
        except BackendUnavailable as exc:  # a helper, a guard or a route's store call
            if started:
                raise
            await _unavailable(exc, scope, receive, send)

    def _cross_site_write(self, scope: Scope) -> bool:
        """An unsafe request another site made the browser send: the
        browser says so (``Sec-Fetch-Site: cross-site``), or its ``Origin``
        is neither this one nor trusted. A request with neither header (an
        older browser, a non-browser client) is let through: ``SameSite``
        covers browsers that send no ``Origin``."""
        if scope.get("method", "GET") in _SAFE_METHODS:
            return False
        fetch_site: bytes | None = None
        origin: str | None = None
        host: str | None = None
        for name, raw in scope.get("headers", []):
            if name == b"sec-fetch-site":
                fetch_site = raw
            elif name == b"origin":
                origin = raw.decode("latin-1").strip().rstrip("/").lower()
            elif name == b"host":
                host = raw.decode("latin-1").strip().lower()
        if fetch_site == b"cross-site":
            return True
        if origin is None or origin in self.trusted_origins:
            return False
        own = f"{scope.get('scheme', 'http')}://{host}"
        return origin != own

    def _token(self, scope: Scope) -> tuple[str | None, bool]:
        """The token from the header, else from the cookie. Cookies are read
        by a small linear parser over every Cookie header (tokens are
        base64url: nothing to unquote); a malformed cookie of someone else's
        does not hide ours, and ours sent twice (a sibling subdomain may
        plant one) is no session: which one is meant cannot be known."""
        found: list[bytes] = []
        for name, raw in scope.get("headers", []):
            if name == self.header:
                text: str = raw.decode("latin-1").strip()
                if text:
                    return text, False
            elif name == b"cookie":
                found += _cookie_values(raw, self._cookie_key)
        if len(found) != 1 or not found[0]:
            return None, False
        return found[0].decode("latin-1"), True

    def set_cookie(self, token: str, expires_at: float) -> str:
        """The Set-Cookie value for a session token valid until `expires_at`."""
        max_age = max(0, int(expires_at - time.time()))
        return self._cookie(f"{self.cookie_name}={token}", f"Max-Age={max_age}")

    def clear_cookie(self) -> str:
        """The Set-Cookie value that makes the browser drop the token."""
        return self._cookie(
            f"{self.cookie_name}=", "Max-Age=0", "Expires=Thu, 01 Jan 1970 00:00:00 GMT"
        )

    def _cookie(self, *parts: str) -> str:
        attrs = [
            *parts,
            f"Path={self.cookie_path}",
            "HttpOnly",
            f"SameSite={self.same_site.title()}",
        ]
        if self.cookie_domain:
            attrs.append(f"Domain={self.cookie_domain}")
        if self.secure or self.same_site == "none":
            attrs.append("Secure")
        return "; ".join(attrs)


async def _unavailable(exc: BackendUnavailable, scope: Scope, receive: Receive, send: Send) -> None:
    """The session server is down or too slow: an answer, not a crash. 503
    in the platform's error shape, with a message that names no host, port
    or password; a websocket is closed with 1011 (server error)."""
    if scope["type"] != "http":
        await send({"type": "websocket.close", "code": 1011})
        return
    entry = {
        "origin": "server",
        "code": exc.code,
        "message": "the session server is unavailable; try again shortly",
    }
    response = JSONResponse({"errors": [entry]}, status_code=503, headers={"Retry-After": "1"})
    await response(scope, receive, send)


def _cookie_values(header: bytes, key: bytes) -> list[bytes]:
    """The values of cookie `key` in one Cookie header, in one pass: only
    each pair's name is looked at (a name much longer than `key` is skipped
    uncopied), so a hostile header costs time in proportion to its size."""
    out: list[bytes] = []
    i, end = 0, len(header)
    while i < end:
        j = header.find(b";", i)
        if j < 0:
            j = end
        eq = header.find(b"=", i, j)
        if 0 <= eq - i <= len(key) + 8 and header[i:eq].strip() == key:
            out.append(header[eq + 1 : j].strip())
        i = j + 1
    return out
