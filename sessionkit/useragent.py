"""User-agent parsing, cached: a busy app sees few distinct user agents."""

from __future__ import annotations

from functools import lru_cache

import msgspec
import ua_parser


class Device(msgspec.Struct, frozen=True):
    family: str
    brand: str | None = None
    model: str | None = None


class OperatingSystem(msgspec.Struct, frozen=True):
    family: str
    major: str | None = None
    minor: str | None = None
    patch: str | None = None
    patch_minor: str | None = None


class UserAgent(msgspec.Struct, frozen=True):
    """A parsed user agent: browser family and version, device, OS, raw string."""

    family: str
    major: str | None
    minor: str | None
    patch: str | None
    device: Device
    os: OperatingSystem
    raw: str


@lru_cache(maxsize=4096)
def parse_user_agent(raw: str) -> UserAgent:
    """Parse a User-Agent header (cached)."""
    r = ua_parser.parse(raw).with_defaults()
    return UserAgent(
        family=r.user_agent.family,
        major=r.user_agent.major,
        minor=r.user_agent.minor,
        patch=r.user_agent.patch,
        device=Device(r.device.family, r.device.brand, r.device.model),
        os=OperatingSystem(r.os.family, r.os.major, r.os.minor, r.os.patch, r.os.patch_minor),
        raw=raw,
    )
