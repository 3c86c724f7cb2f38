"""A real, private redis-server for the shared-state tests: started by the fixture on a free
port in a temporary directory (never the system service), emptied before each test."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator

import pytest

from b2bua import redis_server
from b2bua.shared_state import sync_client


@pytest.fixture(scope="module")
def redis_module() -> Iterator[redis_server.PrivateRedis]:
    server = redis_server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def redis(redis_module: redis_server.PrivateRedis) -> Iterator[redis_server.PrivateRedis]:
    if redis_module.process.poll() is not None:  # a test stopped it without restarting
        redis_module.restart()
    client = sync_client(redis_module.url, 2.0)
    client.flushall()
    client.close()
    yield redis_module


async def eventually(check: Callable[[], object], timeout: float = 5.0) -> None:
    """Wait until `check()` is truthy (changes reach other workers through pub/sub)."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {check}")
        await asyncio.sleep(0.01)
