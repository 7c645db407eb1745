"""The session layer for async web apps: ASGI middleware, sign-in/out
helpers, route guards and Altogic-compatible session endpoints."""

from sessionkit.web.auth import (
    Guard,
    get_session,
    require_groups,
    require_session,
    session_state,
    sign_in,
    sign_out,
    sign_out_everywhere,
    sign_out_everywhere_else,
)
from sessionkit.web.errors import AccessDenied, MiddlewareMissing
from sessionkit.web.middleware import SessionMiddleware, SessionState

__all__ = [
    "AccessDenied",
    "Guard",
    "MiddlewareMissing",
    "SessionMiddleware",
    "SessionState",
    "altogic_router",
    "altogic_routes",
    "get_session",
    "require_groups",
    "require_session",
    "session_state",
    "sign_in",
    "sign_out",
    "sign_out_everywhere",
    "sign_out_everywhere_else",
]

from sessionkit.web.altogic import altogic_router, altogic_routes
