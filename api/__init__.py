"""aiohttp OpenAI-compatible completion server over engine.AsyncEngine (no engine logic here)."""
