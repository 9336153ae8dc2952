"""The OpenRouter adapter: aiohttp and JSON stop here (``api -> domain <- upstream``)."""

from __future__ import annotations

from service.upstream.openrouter import OpenRouterClient

__all__ = ["OpenRouterClient"]
