"""For test modules that run on the real server only: import `backend` from
here and the shared `store`, `make_store` and `prefix` fixtures use it."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from tests.conftest import Backend


@pytest.fixture(name="backend")
async def real_server_backend(server_url: str) -> AsyncIterator[Backend]:
    """A client on the embedded real server (or REDIS_URL), closed after the test."""
    client = aioredis.Redis.from_url(server_url)
    yield Backend("server", client)
    await client.aclose()
