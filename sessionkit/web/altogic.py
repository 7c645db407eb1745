"""Session endpoints compatible with the `altogic` JavaScript client.

Front ends built on that client list sessions, recognise the current one by
comparing `token`s, and revoke another device with ``signOut(session.token)``.
sessionkit never hands out other devices' tokens, so the listing carries the
caller's own session with its real token and every other session with its
public id in `token`; ``signout`` accepts such an id for a session of the
caller's own user (another user's: 403; an unknown one: 200, nothing done).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route, Router

from sessionkit._model import Session
from sessionkit.store import SessionStore
from sessionkit.web.auth import (
    require_session,
    session_state,
    sign_out,
    sign_out_everywhere,
    sign_out_everywhere_else,
)
from sessionkit.web.errors import AccessDenied

PREFIX = "/_api/rest/v1/auth"


Handler = Callable[[Request, Session], Awaitable[Response]]


def _with_session(handler: Handler) -> Callable[[Request], Awaitable[Response]]:
    """An endpoint that answers 401 in the platform's shape without a live session."""

    async def endpoint(request: Request) -> Response:
        if session_state(request).csrf_rejected:
            return AccessDenied(
                403, "csrf_rejected", "a cross-site request may not use the session cookie"
            ).response()
        try:
            current = require_session.check(request)
        except AccessDenied as denied:
            return denied.response()
        return await handler(request, current)

    return endpoint


def _platform_session(s: Session, token: str) -> dict[str, Any]:
    """A session in the listing: the platform's `Session` fields and `id`,
    `expiresAt`, `lastActiveAt`; never the session's server-side `data`."""
    doc = s.to_dict()
    del doc["data"]
    doc["token"] = token
    return doc


@_with_session
async def _sessions(request: Request, current: Session) -> Response:
    store = session_state(request).store
    listing = [
        _platform_session(s, (current.token or "") if s.id == current.id else s.id)
        for s in await store.list(current.user_id)
    ]
    return JSONResponse(listing)


@_with_session
async def _signout(request: Request, current: Session) -> Response:
    body: Any = {}
    raw = await request.body()
    if raw.strip():
        # A cross-site form can post text/plain without a preflight; JSON it cannot.
        if request.headers.get("content-type", "").split(";")[0].strip() != "application/json":
            return AccessDenied(
                415, "unsupported_media_type", "the body must be application/json"
            ).response()
        try:
            body = await request.json()
        except ValueError:
            return AccessDenied(400, "validation_error", "the body is not JSON").response()
    target = body.get("token") if isinstance(body, dict) else None
    if not target or target == current.token or target == current.id:
        # No token, or an empty one: the client means "this session" (as
        # altogic's signOut does when it is given none).
        await sign_out(request)
        return JSONResponse({})
    if not isinstance(target, str):
        return AccessDenied(400, "validation_error", "token must be text").response()
    store = session_state(request).store
    if await store.revoke(current.user_id, target) == "another_user":
        return AccessDenied(403, "forbidden", "that session belongs to another user").response()
    return JSONResponse({})  # deleted, or there was no such session


@_with_session
async def _signout_all(request: Request, current: Session) -> Response:
    await sign_out_everywhere(request)
    return JSONResponse({})


@_with_session
async def _signout_all_except(request: Request, current: Session) -> Response:
    await sign_out_everywhere_else(request)
    return JSONResponse({})


def altogic_routes(prefix: str = PREFIX) -> list[BaseRoute]:
    """The routes, for ``Starlette(routes=[...])`` or
    ``app.router.routes.extend(...)``; the app needs `SessionMiddleware`."""
    return [
        Route(f"{prefix}/sessions", _sessions, methods=["GET"]),
        Route(f"{prefix}/signout", _signout, methods=["POST"]),
        Route(f"{prefix}/signout-all", _signout_all, methods=["POST"]),
        Route(f"{prefix}/signout-all-except", _signout_all_except, methods=["POST"]),
    ]


def altogic_router(store: SessionStore | None = None, prefix: str = PREFIX) -> Router:
    """The same routes as a mountable Starlette `Router`. The store is the one
    `SessionMiddleware` was given; `store` is accepted for symmetry and unused."""
    del store
    return Router(routes=altogic_routes(prefix))
