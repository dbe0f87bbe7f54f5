"""A JSON POST over real HTTP, with the status it must answer."""
from __future__ import annotations


async def post(http, url: str, body: dict, expect: int = 200) -> dict:
    async with http.post(url, json=body) as r:
        assert r.status == expect, await r.text()
        return await r.json()
