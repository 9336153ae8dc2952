"""The model catalog cache: fetched on first use, refreshed in the background before it expires.

Readers never wait for a refresh: at ``_REFRESH_AT_FRACTION`` of the TTL a background task
fetches the list again, and when that fails the previous list keeps being served (a retry
follows after ``_REFRESH_RETRY_FRACTION`` of the TTL). Only the very first read waits.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Final

from service.domain.models import ModelInfo
from service.errors import GatewayError

logger = logging.getLogger(__name__)

# Refresh the catalog when this fraction of its TTL has passed, so readers never wait.
_REFRESH_AT_FRACTION: Final = 0.8
# After a failed refresh, try again after this fraction of the TTL (the stale list is served).
_REFRESH_RETRY_FRACTION: Final = 0.1


class ModelCatalog:
    """The cached result of ``fetch`` (one ``GET /models``), valid for ``ttl_s`` seconds."""

    def __init__(
        self, fetch: Callable[[], Awaitable[Sequence[ModelInfo]]], *, ttl_s: float
    ) -> None:
        self._fetch = fetch
        self._ttl_s = ttl_s
        self._models: tuple[ModelInfo, ...] | None = None
        self._expire_at = 0.0
        self._refresh_at = 0.0
        self._lock = asyncio.Lock()
        self._loaded = asyncio.Event()
        self._refresh_task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start the background refresher (idempotent); it waits for the first load."""
        if self._refresh_task is None:
            self._refresh_task = asyncio.create_task(
                self._refresh_forever(), name="openrouter-models-refresh"
            )

    async def close(self) -> None:
        task, self._refresh_task = self._refresh_task, None
        if task is None:
            return
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            # Re-raise only if *we* are being cancelled, not because of task.cancel().
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                raise

    async def models(self) -> tuple[ModelInfo, ...]:
        """The list; fetched now only on first use, or when it expired with no refresher."""
        models = self._models
        loop = asyncio.get_running_loop()
        refreshing = self._refresh_task is not None and not self._refresh_task.done()
        if models is not None and (refreshing or loop.time() < self._expire_at):
            return models
        async with self._lock:
            if self._models is not None and loop.time() < self._expire_at:
                return self._models
            try:
                return await self._load()
            except GatewayError as exc:
                if self._models is None:
                    raise
                logger.warning(
                    "model catalog refresh failed (%s); serving the cached list", exc.reason
                )
                return self._models

    async def _load(self) -> tuple[ModelInfo, ...]:
        models = tuple(await self._fetch())
        now = asyncio.get_running_loop().time()
        self._models = models
        self._expire_at = now + self._ttl_s
        self._refresh_at = now + self._ttl_s * _REFRESH_AT_FRACTION
        self._loaded.set()
        logger.debug("model catalog loaded: %d models", len(models))
        return models

    async def _refresh_forever(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            # The first fetch is the first caller's; refreshing starts once there is a list.
            await self._loaded.wait()
            delay = self._refresh_at - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            try:
                async with self._lock:
                    await self._load()
            except Exception as exc:
                reason = exc.reason if isinstance(exc, GatewayError) else type(exc).__name__
                logger.warning("model catalog refresh failed (%s); serving the cached list", reason)
                self._refresh_at = loop.time() + self._ttl_s * _REFRESH_RETRY_FRACTION


__all__ = ["ModelCatalog"]
