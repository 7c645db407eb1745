"""Sign-in / sign-out helpers and route guards for the web layer.

The helpers take the request (anything with a ``.scope``, or the ASGI scope
itself) of an app behind `SessionMiddleware`; they change the session in
Redis and leave the cookie for the middleware to set on the response.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any, Literal, TypeVar, overload

from starlette.requests import HTTPConnection, Request
from starlette.responses import Response

from sessionkit._model import Session
from sessionkit.errors import ValidationError
from sessionkit.web.errors import AccessDenied, MiddlewareMissing
from sessionkit.web.middleware import SCOPE_KEY, SessionState

Endpoint = TypeVar("Endpoint", bound=Callable[..., Awaitable[Response]])


def _scope(request: Any) -> Mapping[str, Any]:
    scope = getattr(request, "scope", request)
    if not isinstance(scope, Mapping):
        raise ValidationError(
            f"expected a request or an ASGI scope, got {type(request).__name__}",
            details={"parameter": "request"},
        )
    return scope


def session_state(request: Any) -> SessionState:
    """The middleware's per-request state (token, session, pending cookie)."""
    state = _scope(request).get(SCOPE_KEY)
    if not isinstance(state, SessionState):
        raise MiddlewareMissing(
            "this request did not pass through sessionkit.web.SessionMiddleware: add it "
            "with app.add_middleware(SessionMiddleware, store=store)"
        )
    return state


def get_session(request: Any) -> Session | None:
    """The request's session, or None."""
    return session_state(request).session


def _user_agent(scope: Mapping[str, Any]) -> str | None:
    for name, value in scope.get("headers", []):
        if name == b"user-agent":
            text: str = value.decode("latin-1")
            return text
    return None


def _set(state: SessionState, session: Session | None) -> None:
    state.session = session
    state.token = session.token if session else None


async def sign_in(
    request: Any,
    user_id: str,
    access_groups: str | Iterable[str] = (),
    *,
    data: dict[str, Any] | None = None,
) -> Session:
    """Start a new session for `user_id` (user agent from the request) and set
    its cookie. A session whose token came with the request is revoked first:
    a sign-in always issues a new token (no session fixation)."""
    state = session_state(request)
    scope = _scope(request)
    store = state.store
    if state.session is not None and state.token:
        await store.delete(state.session.user_id, state.token)
    session = await store.create(user_id, access_groups, user_agent=_user_agent(scope), data=data)
    _set(state, session)
    absolute = session.created_at.timestamp() + store.lifetime_ms / 1000
    state.cookie = state.middleware.set_cookie(session.token or "", absolute)
    return session


async def sign_out(request: Any) -> bool:
    """End this request's session and expire its cookie; False if there was none."""
    state = session_state(request)
    done = False
    if state.session is not None and state.token:
        done = await state.store.delete(state.session.user_id, state.token)
    _set(state, None)
    state.cookie = state.middleware.clear_cookie()
    return done


async def sign_out_everywhere_else(request: Any) -> int:
    """End every other session of this request's user; returns how many."""
    state = session_state(request)
    if state.session is None:
        return 0
    return await state.store.delete_all(state.session.user_id, except_token=state.token)


async def sign_out_everywhere(request: Any) -> int:
    """End every session of this request's user, this one included."""
    state = session_state(request)
    if state.session is None:
        return 0
    n = await state.store.delete_all(state.session.user_id)
    _set(state, None)
    state.cookie = state.middleware.clear_cookie()
    return n


Mode = Literal["any", "all"]


class Guard:
    """A route guard: a FastAPI dependency returning the `Session`
    (``Depends(require_session)``) and a decorator for Starlette endpoints
    (``@require_groups("admin")``). No or an invalid session: 401; a missing
    access group: 403; both with the platform's ``{"errors": [...]}`` body."""

    def __init__(self, groups: tuple[str, ...] = (), mode: Mode = "any") -> None:
        if mode not in ("any", "all"):
            raise ValidationError(
                f"mode must be 'any' or 'all', got {mode!r}", details={"parameter": "mode"}
            )
        if not all(isinstance(g, str) and g for g in groups):
            raise ValidationError(
                "access groups must be non-empty texts", details={"parameter": "groups"}
            )
        self.groups = groups
        self.mode = mode
        # What FastAPI sees: a dependency that takes the request.
        self.__signature__ = inspect.Signature(
            [inspect.Parameter("request", inspect.Parameter.POSITIONAL_OR_KEYWORD,
                               annotation=HTTPConnection)],
            return_annotation=Session,
        )  # fmt: skip

    def check(self, request: Any) -> Session:
        """The request's session if it passes; raises `AccessDenied` otherwise."""
        state = session_state(request)
        session = state.session
        if session is None:
            if state.token:
                raise AccessDenied(
                    401, "invalid_session_token", "the session token is invalid or expired"
                )
            raise AccessDenied(401, "missing_session_token", "a session token is required")
        if self.groups:
            have = set(session.access_groups)
            ok = (
                have.issuperset(self.groups)
                if self.mode == "all"
                else bool(have & set(self.groups))
            )
            if not ok:
                needed = (" and " if self.mode == "all" else " or ").join(self.groups)
                raise AccessDenied(403, "forbidden", f"this requires the access group {needed}")
        return session

    @overload
    def __call__(self, request: HTTPConnection) -> Session: ...
    @overload
    def __call__(self, request: Endpoint) -> Endpoint: ...
    def __call__(self, request: Any) -> Any:
        if isinstance(request, HTTPConnection):
            return self.check(request)
        if callable(request):
            return self._decorate(request)
        raise ValidationError(
            "a guard takes a request (as a dependency) or an endpoint (as a decorator)",
            details={"parameter": "request"},
        )

    def _decorate(self, endpoint: Callable[..., Awaitable[Response]]) -> Any:
        @functools.wraps(endpoint)
        async def guarded(request: Request, *args: Any, **kwargs: Any) -> Response:
            try:
                self.check(request)
            except AccessDenied as denied:
                return denied.response()
            return await endpoint(request, *args, **kwargs)

        return guarded


require_session = Guard()


def require_groups(*groups: str, mode: Mode = "any") -> Guard:
    """A guard that needs a session holding any (or, with ``mode="all"``, all) of `groups`."""
    if not groups:
        raise ValidationError(
            "require_groups needs at least one access group", details={"parameter": "groups"}
        )
    return Guard(groups, mode)
