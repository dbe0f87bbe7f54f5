"""What the API tests share: one HTTP client session per test module."""
from __future__ import annotations

import aiohttp
import pytest_asyncio


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def http():
    async with aiohttp.ClientSession() as session:
        yield session
