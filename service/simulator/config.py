"""Settings of one simulator instance, fixed when the app is created."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class SimulatorConfig:
    """How the simulator behaves when a request carries no directive saying otherwise.

    Attributes:
        fast: Benchmark mode. No keep-alive comments, no pacing, requests are counted
            but not recorded, and a stream is written in one piece.
        keepalive_comments: ``: OPENROUTER PROCESSING`` comments sent before the first
            data event of a stream (real captures show bursts of 10-17).
        token_delay_s: Pause between stream chunks; 0 sends them as fast as possible.
        expected_api_key: When set, any other bearer token gets 401 "User not found.".
        default_completion_tokens: Length of a plain-text reply, in tokens.
    """

    fast: bool = False
    keepalive_comments: int = 3
    token_delay_s: float = 0.0
    expected_api_key: str | None = None
    default_completion_tokens: int = 24

    def __post_init__(self) -> None:
        if self.keepalive_comments < 0:
            raise ValueError("keepalive_comments must be >= 0")
        if self.token_delay_s < 0:
            raise ValueError("token_delay_s must be >= 0")
        if self.default_completion_tokens < 1:
            raise ValueError("default_completion_tokens must be >= 1")
