"""The web layer's errors (defined with every other in `sessionkit.errors`)."""

from __future__ import annotations

from sessionkit.errors import AccessDenied, MiddlewareMissing

__all__ = ["AccessDenied", "MiddlewareMissing"]
