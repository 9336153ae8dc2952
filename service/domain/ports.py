"""The interfaces the domain needs from the outside world; adapters implement them.

``upstream.OpenRouterClient`` implements ``CompletionBackend``. Keeping the protocol here is
what lets dependencies point ``api -> domain <- upstream``.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass
from typing import Protocol

from service.domain.completion import CallStats, Completion, CompletionRequest, StreamEvent
from service.domain.embeddings import EmbeddingRequest, Embeddings
from service.domain.models import ModelInfo


@dataclass(frozen=True, slots=True)
class GenerationStats:
    """OpenRouter's after-the-fact record of one generation (``GET /generation``)."""

    id: str
    model: str
    total_cost_usd: float
    prompt_tokens: int
    completion_tokens: int
    reasoning_tokens: int
    cached_tokens: int
    cancelled: bool
    finish_reason: str


class CompletionBackend(Protocol):
    async def complete(
        self, request: CompletionRequest, *, deadline: float, stats: CallStats | None = None
    ) -> Completion:
        """One whole answer; ``deadline`` is an absolute ``loop.time()`` bound for all attempts."""
        ...

    def stream(
        self, request: CompletionRequest, *, deadline: float, stats: CallStats | None = None
    ) -> AsyncGenerator[StreamEvent, None]:
        """Events of one streamed answer; a clean end always yields ``StreamFinished`` last."""
        ...

    async def embed(
        self, request: EmbeddingRequest, *, deadline: float, stats: CallStats | None = None
    ) -> Embeddings:
        """The vectors of every input, in order (``/embeddings``), retried like ``complete``."""
        ...

    async def list_models(self) -> Sequence[ModelInfo]:
        """The catalog (cached by the adapter)."""
        ...

    async def get_generation(
        self, generation_id: str, *, deadline: float
    ) -> GenerationStats | None:
        """OpenRouter's record of a generation, or None when it does not (yet) know it."""
        ...
