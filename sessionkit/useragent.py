"""User-agent parsing, cached: a busy app sees few distinct user agents."""

from __future__ import annotations

from functools import lru_cache

import msgspec
import ua_parser


class Device(msgspec.Struct, frozen=True):
    """The device; the platform gives it versions too (a device has none: "0")."""

    family: str
    major: str = "0"
    minor: str = "0"
    patch: str = "0"


class OperatingSystem(msgspec.Struct, frozen=True):
    family: str
    major: str = "0"
    minor: str = "0"
    patch: str = "0"


class UserAgent(msgspec.Struct, frozen=True):
    """A parsed user agent in the platform's shape: browser family and
    version, device, OS; every version a string, ``"0"`` when unknown."""

    family: str
    major: str
    minor: str
    patch: str
    device: Device
    os: OperatingSystem


def _v(version: str | None) -> str:
    return version or "0"


@lru_cache(maxsize=4096)
def parse_user_agent(raw: str) -> UserAgent:
    """Parse a User-Agent header (cached)."""
    r = ua_parser.parse(raw).with_defaults()
    return UserAgent(
        family=r.user_agent.family,
        major=_v(r.user_agent.major),
        minor=_v(r.user_agent.minor),
        patch=_v(r.user_agent.patch),
        device=Device(r.device.family),
        os=OperatingSystem(r.os.family, _v(r.os.major), _v(r.os.minor), _v(r.os.patch)),
    )


__all__ = ["Device", "OperatingSystem", "UserAgent", "parse_user_agent"]
