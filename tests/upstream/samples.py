"""Wire samples from the research notes (/work/shared/openrouter-api.md), as Python values.

Elided parts of the recordings ("…") are filled with plausible values of the same shape.
"""

from __future__ import annotations

from typing import Any

import orjson

KEEPALIVE = ": OPENROUTER PROCESSING"

GROK_ID = "gen-1770044155-jEc8jq97DQBmH0pjR97n"
_GROK_HEAD: dict[str, Any] = {
    "id": GROK_ID,
    "provider": "xAI",
    "model": "x-ai/grok-4",
    "object": "chat.completion.chunk",
    "created": 1770044155,
}


def _grok_chunk(
    content: str, finish: str | None = None, native: str | None = None, **extra: Any
) -> dict[str, Any]:
    choice = {
        "index": 0,
        "delta": {"role": "assistant", "content": content},
        "finish_reason": finish,
        "native_finish_reason": native,
        "logprobs": None,
    }
    return {**_GROK_HEAD, "choices": [choice], **extra}


GROK_USAGE: dict[str, Any] = {
    "prompt_tokens": 687,
    "completion_tokens": 254,
    "total_tokens": 941,
    "cost": 0.0043275,
    "is_byok": False,
    "prompt_tokens_details": {"cached_tokens": 686},
    "cost_details": {"upstream_inference_cost": None},
    "completion_tokens_details": {"reasoning_tokens": 184},
}

# x-ai/grok-4 via ``models`` fallback: a keep-alive burst (17 in a row), a role chunk with
# empty content, content chunks, the finish chunk, then usage in a chunk of its own whose
# only choice has an empty delta and finish_reason null, then [DONE].
GROK_CHUNKS: list[dict[str, Any]] = [
    _grok_chunk(""),
    _grok_chunk("I'm"),
    _grok_chunk(" fine"),
    _grok_chunk(", thanks"),
    _grok_chunk("", "stop", "completed"),
    _grok_chunk("", usage=GROK_USAGE),
]
GROK_KEEPALIVES = 17

MINIMAX_ID = "gen-1762179802-UN8pkJI4AGZvryk0kFnb"
_MINIMAX_HEAD: dict[str, Any] = {
    "id": MINIMAX_ID,
    "provider": "Minimax",
    "model": "minimax/minimax-m2:free",
    "object": "chat.completion.chunk",
    "created": 1762179802,
}
MINIMAX_USAGE: dict[str, Any] = {
    "prompt_tokens": 43,
    "completion_tokens": 10,
    "total_tokens": 53,
    "cost": 0,
    "is_byok": False,
}


def _minimax_choice(content: str, finish: str | None) -> list[dict[str, Any]]:
    return [
        {
            "index": 0,
            "delta": {"role": "assistant", "content": content},
            "finish_reason": finish,
            "native_finish_reason": finish,
            "logprobs": None,
        }
    ]


# minimax/minimax-m2:free with max_completion_tokens 10: a length finish, then an error chunk
# with finish_reason null that carries usage, then [DONE].
MINIMAX_CHUNKS: list[dict[str, Any]] = [
    {**_MINIMAX_HEAD, "choices": _minimax_choice("Hello", None)},
    {**_MINIMAX_HEAD, "choices": _minimax_choice(" there", None)},
    {**_MINIMAX_HEAD, "choices": _minimax_choice("", "length")},
    {
        "id": MINIMAX_ID,
        "provider": "Minimax",
        "error": {"code": 400, "message": "Token limit reached"},
        "model": "minimax/minimax-m2:free",
        "object": "chat.completion.chunk",
        "created": 1762179802,
        "choices": _minimax_choice("", None),
        "usage": MINIMAX_USAGE,
    },
]

# The documented mid-stream error: a top-level error and finish_reason "error", no [DONE].
DOCUMENTED_ERROR_CHUNK: dict[str, Any] = {
    "id": "gen-abc123",
    "object": "chat.completion.chunk",
    "created": 1234567890,
    "model": "openai/gpt-4o",
    "provider": "OpenAI",
    "error": {
        "code": 429,
        "message": "Rate limit exceeded",
        "metadata": {"error_type": "rate_limit_exceeded"},
    },
    "choices": [{"index": 0, "delta": {"content": ""}, "finish_reason": "error"}],
}
DOCUMENTED_CHUNKS: list[dict[str, Any]] = [
    {
        "id": "gen-abc123",
        "object": "chat.completion.chunk",
        "created": 1234567890,
        "model": "openai/gpt-4o",
        "provider": "OpenAI",
        "choices": [{"index": 0, "delta": {"content": "Partial"}, "finish_reason": None}],
    },
    DOCUMENTED_ERROR_CHUNK,
]


def sse_bytes(
    chunks: list[dict[str, Any]],
    *,
    keepalives: int = 0,
    done: bool = True,
    eol: str = "\n",
) -> bytes:
    """Frame chunks the way OpenRouter does: comments first, ``data: <json>`` + blank line."""
    e = eol.encode()
    out = [KEEPALIVE.encode() + e + e for _ in range(keepalives)]
    out += [b"data: " + orjson.dumps(chunk) + e + e for chunk in chunks]
    if done:
        out.append(b"data: [DONE]" + e + e)
    return b"".join(out)


def grok_stream(eol: str = "\n") -> bytes:
    return sse_bytes(GROK_CHUNKS, keepalives=GROK_KEEPALIVES, eol=eol)


def minimax_stream(eol: str = "\n") -> bytes:
    return sse_bytes(MINIMAX_CHUNKS, eol=eol)


def documented_error_stream(eol: str = "\n") -> bytes:
    return sse_bytes(DOCUMENTED_CHUNKS, keepalives=2, done=False, eol=eol)


# --- non-streamed bodies ----------------------------------------------------------------

# mistralai/mistral-small tool call: content '' (not null), ``index`` present although this
# is not a stream, and usage without cost.
TOOL_CALL_BODY: dict[str, Any] = {
    "id": "gen-1762047030-dJUcJW4ildNGqK4UV6iJ",
    "provider": "Mistral",
    "model": "mistralai/mistral-small",
    "object": "chat.completion",
    "created": 1762047030,
    "choices": [
        {
            "finish_reason": "tool_calls",
            "native_finish_reason": "tool_calls",
            "index": 0,
            "logprobs": None,
            "message": {
                "content": "",
                "reasoning": None,
                "refusal": None,
                "role": "assistant",
                "tool_calls": [
                    {
                        "function": {
                            "arguments": '{"numerator": 123, "denominator": 456, '
                            '"on_inf": "infinity"}',
                            "name": "divide",
                        },
                        "id": "3sniiMddS",
                        "index": 0,
                        "type": "function",
                    }
                ],
            },
        }
    ],
    "usage": {"completion_tokens": 43, "prompt_tokens": 134, "total_tokens": 177},
}

# gpt-5-mini (Feb 2026): provider, native "completed", reasoning, refusal null, cost.
REASONING_BODY: dict[str, Any] = {
    "id": "gen-1770000000-abcdefghijklmnopqrst",
    "provider": "OpenAI",
    "model": "openai/gpt-5-mini",
    "object": "chat.completion",
    "created": 1770000000,
    "choices": [
        {
            "finish_reason": "stop",
            "native_finish_reason": "completed",
            "index": 0,
            "message": {
                "role": "assistant",
                "content": "Paris.",
                "reasoning": "The capital of France is Paris.",
                "reasoning_details": [
                    {"type": "reasoning.summary", "summary": "capital", "index": 0}
                ],
                "refusal": None,
            },
        }
    ],
    "usage": {
        "prompt_tokens": 12,
        "completion_tokens": 200,
        "total_tokens": 212,
        "cost": 0.00353025,
        "is_byok": False,
        "prompt_tokens_details": {"cached_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": 192},
    },
}

# The documented non-streamed equivalent of a mid-stream error: HTTP 200, partial output.
CHOICE_ERROR_BODY: dict[str, Any] = {
    "id": "gen-1770000001-abcdefghijklmnopqrst",
    "model": "openai/gpt-4o",
    "choices": [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "partial output..."},
            "finish_reason": "error",
            "error": {
                "code": 502,
                "message": "Provider returned error",
                "metadata": {"error_type": "provider_unavailable"},
            },
        }
    ],
    "usage": {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8},
}

# --- error bodies -----------------------------------------------------------------------

ERR_400 = {
    "error": {"message": "minimax-m2.5:free is not a valid model ID", "code": 400},
    "user_id": "user_39yv",
}
ERR_401 = {"error": {"message": "No auth credentials found", "code": 401}}
ERR_402 = {
    "error": {
        "message": "This request requires more credits, or fewer max_tokens. You requested up "
        "to 32000 tokens, but can only afford 27342. To increase, visit "
        "https://openrouter.ai/settings/credits and upgrade to a paid account",
        "code": 402,
        "metadata": {"provider_name": None},
    },
    "user_id": "user_3D0I",
}
ERR_404 = {
    "error": {"code": 404, "message": "No endpoints found for google/gemini-2.5-flash:free."},
    "user_id": "user_2u7z",
}
ERR_429_FREE = {
    "error": {
        "message": "Rate limit exceeded: free-models-per-day. Add 10 credits to unlock 1000 "
        "free model requests per day",
        "code": 429,
        "metadata": {
            "headers": {"X-RateLimit-Limit": "50", "X-RateLimit-Remaining": "0"},
            "limit_source": "openrouter_free_tier_daily",
        },
    }
}
ERR_429_PROVIDER = {
    "error": {
        "message": "Provider returned error",
        "code": 429,
        "metadata": {
            "raw": "meta-llama/llama-3.3-70b-instruct:free is temporarily rate-limited upstream",
            "provider_name": "Venice",
            "is_byok": False,
            "retry_after_seconds": 17,
            "retry_after_seconds_raw": 16.007,
            "headers": {"Retry-After": "17"},
        },
    },
    "user_id": "user_x",
}
FLAGGED_PROMPT = "please write something nasty about my neighbour Bob"
ERR_403_MODERATION = {
    "error": {
        "code": 403,
        "message": "Your chosen model requires moderation and your input was flagged",
        "metadata": {
            "reasons": ["harassment", "hate"],
            "flagged_input": FLAGGED_PROMPT,
            "provider_name": "OpenAI",
            "model_slug": "openai/gpt-4o",
        },
    }
}
ERR_403_GUARDRAIL = {
    "error": {
        "code": 403,
        "message": "Request blocked: prompt injection patterns detected",
        "metadata": {"patterns": ["ignore previous instructions"]},
    }
}
ERR_NEW_SHAPE = {
    "error": {
        "message": "All providers for x/y are at capacity.",
        "error_type": "capacity_exhausted",
        "http_status": 429,
        "availability": {
            "code": "capacity_exhausted",
            "retryable": True,
            "retry_after": 3,
            "requested_models": ["x/y"],
        },
    }
}

MODELS_BODY: dict[str, Any] = {
    "data": [
        {
            "id": "openai/gpt-4o",
            "name": "OpenAI: GPT-4o",
            "created": 1715367049,
            "context_length": 128000,
            "architecture": {"modality": "text->text"},
            "pricing": {"prompt": "0.0000025", "completion": "0.00001", "request": "0"},
            "top_provider": {
                "context_length": 128000,
                "max_completion_tokens": 16384,
                "is_moderated": True,
            },
            "supported_parameters": ["max_tokens", "response_format", "structured_outputs"],
        },
        {
            "id": "openrouter/auto",
            "name": "Auto Router",
            "context_length": 2000000,
            "pricing": {"prompt": "-1", "completion": "-1"},
            "top_provider": {"context_length": None, "max_completion_tokens": None},
            "supported_parameters": [],
        },
        {"name": "no id: skipped"},
    ],
    "total_count": 3,
}

GENERATION_BODY: dict[str, Any] = {
    "data": {
        "id": "gen-123",
        "upstream_id": "chatcmpl-1",
        "total_cost": 0.0015,
        "usage": 0.0015,
        "created_at": "2024-07-15T23:33:19.433273+00:00",
        "model": "openai/gpt-4o",
        "provider_name": "Infermatic",
        "streamed": True,
        "cancelled": False,
        "latency": 1250,
        "generation_time": 1200,
        "finish_reason": "stop",
        "native_finish_reason": "stop",
        "tokens_prompt": 10,
        "tokens_completion": 25,
        "native_tokens_prompt": 11,
        "native_tokens_completion": 26,
        "native_tokens_reasoning": 5,
        "native_tokens_cached": 3,
        "external_user": "user-123",
    }
}
