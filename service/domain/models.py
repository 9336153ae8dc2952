"""What the gateway knows about a model: context length, prices and capabilities."""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal


@dataclass(frozen=True, slots=True)
class ModelPricing:
    """Prices in USD per token (per request for ``request``), exact decimals as OpenRouter sends."""

    prompt: Decimal = Decimal(0)
    completion: Decimal = Decimal(0)
    request: Decimal = Decimal(0)

    def cost(self, prompt_tokens: int, completion_tokens: int) -> Decimal:
        return self.prompt * prompt_tokens + self.completion * completion_tokens + self.request


@dataclass(frozen=True, slots=True)
class ModelInfo:
    id: str
    name: str = ""
    context_length: int = 0
    max_completion_tokens: int | None = None
    pricing: ModelPricing = ModelPricing()
    supported_parameters: frozenset[str] = field(default_factory=frozenset)

    @property
    def supports_structured_outputs(self) -> bool:
        """``json_schema`` response formats are enforced natively."""
        return "structured_outputs" in self.supported_parameters

    @property
    def supports_response_format(self) -> bool:
        """At least ``json_object`` mode works."""
        return "response_format" in self.supported_parameters

    @property
    def supports_tools(self) -> bool:
        return "tools" in self.supported_parameters
