"""OpenRouter's error bodies and headers, one builder per status, shaped like real captures."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson

# Real error bodies carry the account's user id; the simulator has exactly one account.
USER_ID = "user_sim"

_DEFAULT_RETRY_AFTER = 1.0
_NEW_SHAPE_RETRY_AFTER = 3.0
_DOCS_URL = "https://openrouter.ai/docs/api-reference/errors-and-debugging"


@dataclass(frozen=True, slots=True)
class ErrorReply:
    """An HTTP error as the simulator sends it."""

    status: int
    body: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)

    def encoded(self) -> bytes:
        return orjson.dumps(self.body)


def _error(code: int, message: str, metadata: dict[str, Any] | None = None) -> dict[str, Any]:
    error: dict[str, Any] = {"message": message, "code": code}
    if metadata is not None:
        error["metadata"] = metadata
    return {"error": error, "user_id": USER_ID}


def seconds_text(seconds: float) -> str:
    """Header form of a delay: "17" for whole seconds, "0.2" otherwise."""
    return str(int(seconds)) if seconds == int(seconds) else format(seconds, "g")


def _seconds_value(seconds: float) -> int | float:
    return int(seconds) if seconds == int(seconds) else seconds


def no_credentials() -> ErrorReply:
    return ErrorReply(401, {"error": {"message": "No auth credentials found", "code": 401}})


def user_not_found() -> ErrorReply:
    return ErrorReply(401, {"error": {"message": "User not found.", "code": 401}})


def bad_request(message: str) -> ErrorReply:
    return ErrorReply(400, _error(400, message))


def invalid_model(model_id: str) -> ErrorReply:
    return ErrorReply(400, _error(400, f"{model_id} is not a valid model ID"))


def no_endpoints_for_parameters() -> ErrorReply:
    return ErrorReply(
        404, _error(404, "No endpoints found that can handle the requested parameters.")
    )


def no_endpoints(message: str) -> ErrorReply:
    """OpenRouter's 404 when provider preferences leave no endpoint of the model."""
    return ErrorReply(404, _error(404, message))


def no_endpoints_for_modality(modality: str) -> ErrorReply:
    return ErrorReply(404, _error(404, f"No endpoints found that support {modality} input"))


def generation_not_found() -> ErrorReply:
    return ErrorReply(404, {"error": {"code": 404, "message": "Generation not found"}})


def flagged_excerpt(text: str, limit: int = 100) -> str:
    """The moderation `flagged_input`: at most 100 chars, middle-truncated with '...'."""
    if len(text) <= limit:
        return text
    keep = (limit - 3) // 2
    return text[:keep] + "..." + text[len(text) - (limit - 3 - keep) :]


def scenario_error(
    code: str,
    *,
    model_id: str,
    provider_name: str,
    retry_after: float | None,
    flagged_input: str,
    context_length: int,
    prompt_tokens: int,
) -> ErrorReply:
    """The reply for an `error=CODE` directive."""
    delay = _DEFAULT_RETRY_AFTER if retry_after is None else retry_after
    match code:
        case "400":
            return ErrorReply(
                400,
                _error(
                    400,
                    f"This endpoint's maximum context length is {context_length} tokens. "
                    f"However, you requested about {context_length + prompt_tokens} tokens "
                    f"({context_length + prompt_tokens} of text input). Please reduce the "
                    'length of either one, or use the "middle-out" transform to compress '
                    "your prompt automatically.",
                    {"provider_name": provider_name},
                ),
            )
        case "401":
            return user_not_found()
        case "402":
            return ErrorReply(
                402,
                _error(
                    402,
                    "This request requires more credits, or fewer max_tokens. You requested "
                    "up to 16384 tokens, but can only afford 1024. To increase, visit "
                    "https://openrouter.ai/settings/credits and upgrade to a paid account",
                    {"provider_name": None},
                ),
            )
        case "403":
            return ErrorReply(
                403,
                _error(
                    403,
                    f"{model_id} requires moderation on {provider_name}. Your input was "
                    'flagged for "harassment". No credits were charged.',
                    {
                        "reasons": ["harassment"],
                        "flagged_input": flagged_excerpt(flagged_input),
                        "provider_name": provider_name,
                        "model_slug": model_id,
                    },
                ),
            )
        case "403-guardrail":
            return ErrorReply(
                403,
                _error(
                    403,
                    "Request blocked: prompt injection patterns detected",
                    {"patterns": ["ignore previous instructions"]},
                ),
            )
        case "400-echo":
            # A provider's 400 that quotes the caller's input back, in error.message and in
            # metadata.raw: providers may echo what they reject, and OpenRouter passes it on.
            raw = {"error": {"message": f"Invalid content: {flagged_input}", "type": "invalid"}}
            return ErrorReply(
                400,
                _error(
                    400,
                    f"Provider returned error: {flagged_excerpt(flagged_input)}",
                    {"raw": orjson.dumps(raw).decode(), "provider_name": provider_name},
                ),
            )
        case "403-key":
            return ErrorReply(403, _error(403, "This API key has been disabled."))
        case "404":
            return ErrorReply(404, _error(404, f"No endpoints found for {model_id}."))
        case "408":
            return ErrorReply(408, _error(408, "Request timed out. Please try again."))
        case "413":
            return ErrorReply(413, _error(413, "Request entity too large."))
        case "422":
            return ErrorReply(
                422, _error(422, "Unprocessable entity: the request could not be processed.")
            )
        case "429":
            return _provider_rate_limit(model_id, provider_name, delay)
        case "429-openrouter":
            return _free_tier_limit(delay)
        case "500":
            return ErrorReply(500, _error(500, "Internal Server Error"))
        case "502":
            return ErrorReply(
                502,
                _error(
                    502,
                    "Provider returned error",
                    {
                        "raw": '{"error":{"message":"upstream connect error",'
                        '"type":"server_error"}}',
                        "provider_name": provider_name,
                        "is_byok": False,
                    },
                ),
            )
        case "503":
            return ErrorReply(
                503,
                _error(
                    503,
                    "No available providers meet your routing requirements. "
                    "Please try again later.",
                ),
                {"Retry-After": seconds_text(delay)},
            )
        case "524":
            return ErrorReply(524, _error(524, "Provider request timed out at the edge."))
        case "529":
            return ErrorReply(
                529,
                _error(
                    529,
                    "Provider returned error",
                    {
                        "raw": '{"type":"error","error":{"type":"overloaded_error",'
                        '"message":"Overloaded"}}',
                        "provider_name": provider_name,
                        "is_byok": False,
                    },
                ),
            )
        case "new-shape":
            return _capacity_exhausted(
                model_id, _NEW_SHAPE_RETRY_AFTER if retry_after is None else retry_after
            )
    status = int(code)
    return ErrorReply(status, _error(status, f"Simulated HTTP {status} error"))


def _provider_rate_limit(model_id: str, provider_name: str, delay: float) -> ErrorReply:
    header = seconds_text(delay)
    return ErrorReply(
        429,
        _error(
            429,
            "Provider returned error",
            {
                "raw": f"{model_id} is temporarily rate-limited upstream. Please retry "
                "shortly, or add your own key to accumulate your rate limits: "
                "https://openrouter.ai/settings/integrations",
                "provider_name": provider_name,
                "is_byok": False,
                "retry_after_seconds": _seconds_value(delay),
                "retry_after_seconds_raw": delay,
                "headers": {"Retry-After": header},
            },
        ),
        {"Retry-After": header},
    )


def _free_tier_limit(delay: float) -> ErrorReply:
    rate_headers = {
        "X-RateLimit-Limit": "50",
        "X-RateLimit-Remaining": "0",
        "X-RateLimit-Reset": "1767225600000",
    }
    return ErrorReply(
        429,
        _error(
            429,
            "Rate limit exceeded: free-models-per-day. Add 10 credits to unlock 1000 free "
            "model requests per day",
            {"headers": rate_headers, "provider_name": None},
        ),
        {**rate_headers, "Retry-After": seconds_text(delay)},
    )


def _capacity_exhausted(model_id: str, delay: float) -> ErrorReply:
    # The availability shape (2026-08) has no error.code; clients must use http_status.
    return ErrorReply(
        429,
        {
            "error": {
                "message": f"All providers for {model_id} are at capacity. Please retry.",
                "error_type": "capacity_exhausted",
                "http_status": 429,
                "availability": {
                    "code": "capacity_exhausted",
                    "retryable": True,
                    "retry_after": _seconds_value(delay),
                    "requested_models": [model_id],
                    "docs_url": _DOCS_URL,
                },
            },
            "user_id": USER_ID,
        },
        {"Retry-After": seconds_text(delay)},
    )
