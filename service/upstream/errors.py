"""The one table from OpenRouter failures (HTTP status, error body, transport) to domain errors.

Everything that turns an upstream failure into a ``service.errors`` class goes through here,
so the mapping is read (and tested) in one place::

    status                      class                       reason
    400, other 4xx              UpstreamBadRequestError     UPSTREAM_BAD_REQUEST
    413                         UpstreamBadRequestError     UPSTREAM_PAYLOAD_TOO_LARGE
    422                         UpstreamBadRequestError     UPSTREAM_UNPROCESSABLE
    401                         UpstreamAuthError           UPSTREAM_AUTH_FAILED
    403 + metadata.reasons      ModerationError             CONTENT_FLAGGED (blocked_by=moderation)
    403 + metadata.patterns     ModerationError             CONTENT_FLAGGED (blocked_by=guardrail)
    403 otherwise               UpstreamAuthError           UPSTREAM_PERMISSION_DENIED
    402                         UpstreamPaymentError        UPSTREAM_INSUFFICIENT_CREDITS
    404                         UpstreamModelNotFoundError  UPSTREAM_MODEL_NOT_FOUND
    408, 504, 524               UpstreamUnavailableError    UPSTREAM_TIMEOUT
    429                         UpstreamRateLimitError      UPSTREAM_RATE_LIMITED
    500, 502, 503, other 5xx    UpstreamUnavailableError    UPSTREAM_UNAVAILABLE
    529                         UpstreamUnavailableError    UPSTREAM_OVERLOADED
    other (2xx/3xx non-200)     UpstreamProtocolError       UPSTREAM_BAD_RESPONSE
    connection refused/reset    UpstreamUnavailableError    UPSTREAM_CONNECTION_FAILED
    read timeout (sock_read)    UpstreamUnavailableError    UPSTREAM_TIMEOUT
    budget/deadline exhausted   DeadlineExceededError       DEADLINE_EXCEEDED
    unparseable 200 answer      UpstreamProtocolError       UPSTREAM_BAD_RESPONSE

The status comes from ``error.code`` (int, digit string, or a name such as ``server_error``),
else ``error.http_status`` (the 2026 availability shape), else the HTTP status. Messages are
our own words plus OpenRouter's short ``error.message``, scrubbed and capped; never the raw
body, ``metadata.raw`` (the provider's body) or ``flagged_input`` (prompt text).
"""

from __future__ import annotations

import email.utils
import math
import re
import time
from collections.abc import Mapping
from typing import Any, Final

import orjson

from service.errors import (
    DeadlineExceededError,
    ModerationError,
    StreamTruncatedError,
    UpstreamAuthError,
    UpstreamBadRequestError,
    UpstreamError,
    UpstreamModelNotFoundError,
    UpstreamPaymentError,
    UpstreamProtocolError,
    UpstreamRateLimitError,
    UpstreamUnavailableError,
)

MAX_MESSAGE_CHARS: Final = 200
_MAX_UPSTREAM_MESSAGE_CHARS: Final = 120

REASON_PAYLOAD_TOO_LARGE: Final = "UPSTREAM_PAYLOAD_TOO_LARGE"
REASON_UNPROCESSABLE: Final = "UPSTREAM_UNPROCESSABLE"
REASON_PERMISSION_DENIED: Final = "UPSTREAM_PERMISSION_DENIED"
REASON_TIMEOUT: Final = "UPSTREAM_TIMEOUT"
REASON_OVERLOADED: Final = "UPSTREAM_OVERLOADED"
REASON_CONNECTION_FAILED: Final = "UPSTREAM_CONNECTION_FAILED"

RETRYABLE_STATUSES: Final = frozenset({408, 429, 500, 502, 503, 524, 529})
"""Statuses an attempt is retried on (with backoff); 504 is added as a gateway timeout."""

# Names seen in place of a numeric ``error.code`` (old docs) or in ``metadata.error_type``.
_CODE_NAMES: Final[Mapping[str, int]] = {
    "invalid_request": 400,
    "invalid_request_error": 400,
    "context_length_exceeded": 400,
    "content_policy_violation": 400,
    "model_not_found": 400,
    "authentication": 401,
    "authentication_error": 401,
    "payment_required": 402,
    "permission_denied": 403,
    "not_found": 404,
    "no_endpoints": 404,
    "model_deprecated": 404,
    "timeout": 408,
    "rate_limit_exceeded": 429,
    "capacity_exhausted": 429,
    "server": 500,
    "server_error": 500,
    "internal_server_error": 500,
    "provider_unavailable": 502,
    "provider_overloaded": 503,
    "temporarily_unavailable": 503,
    "overloaded": 529,
}

# Upstream metadata keys copied into the domain error's metadata (values made strings).
_COPIED_METADATA: Final = (
    ("provider_name", "provider_name"),
    ("error_type", "error_type"),
    ("limit_source", "limit_source"),
    ("model_slug", "model"),
)

# Secrets that might be echoed back in an upstream message: OpenRouter keys and bearer tokens.
_SECRET_RE: Final = re.compile(r"sk-[A-Za-z0-9_\-]{6,}|Bearer\s+\S+", re.IGNORECASE)
_CONTROL_RE: Final = re.compile(r"[\x00-\x1f\x7f]+")


def error_from_response(
    status: int, body: bytes, headers: Mapping[str, str] | None = None
) -> UpstreamError:
    """Map a non-200 answer (or a 200 JSON error body) to a domain error."""
    payload = _error_payload(body)
    retry_after = parse_retry_after((headers or {}).get("Retry-After"))
    if payload is None:
        return _build(status, None, retry_after, fallback_status=status)
    return error_from_payload(payload, http_status=status, retry_after_header=retry_after)


def error_from_payload(
    error: Mapping[str, Any],
    *,
    http_status: int | None = None,
    retry_after_header: float | None = None,
) -> UpstreamError:
    """Map an ``{"error": {...}}`` object (HTTP body, SSE chunk or ``choices[].error``)."""
    status = _status_of(error)
    if status is None:
        # A 200 carrying an error without a usable code: the provider failed mid-answer.
        status = http_status if http_status is not None and http_status != 200 else 502
    return _build(status, error, retry_after_header, fallback_status=http_status)


def connection_error(what: str) -> UpstreamUnavailableError:
    return UpstreamUnavailableError(
        f"could not reach OpenRouter: {what}", reason=REASON_CONNECTION_FAILED
    )


def read_timeout_error(
    what: str = "no data from OpenRouter within the read timeout",
) -> UpstreamUnavailableError:
    return UpstreamUnavailableError(what, reason=REASON_TIMEOUT)


def deadline_error(
    what: str = "the deadline for the upstream call ran out",
) -> DeadlineExceededError:
    return DeadlineExceededError(what)


def protocol_error(what: str, *, status: int | None = None) -> UpstreamProtocolError:
    return UpstreamProtocolError(f"OpenRouter sent an unreadable answer: {what}", status=status)


def truncated_error() -> StreamTruncatedError:
    return StreamTruncatedError("the OpenRouter stream ended before it was complete")


def is_retryable(error: Exception) -> bool:
    """Whether a failed attempt may be sent again (before anything was relayed)."""
    return isinstance(
        error, UpstreamRateLimitError | UpstreamUnavailableError | StreamTruncatedError
    )


def parse_retry_after(value: object) -> float | None:
    """``Retry-After`` as seconds: a (possibly fractional) number or an HTTP date."""
    if value is None:
        return None
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        text = value.strip()
        try:
            seconds = float(text)
        except ValueError:
            try:
                when = email.utils.parsedate_to_datetime(text)
            except (TypeError, ValueError):
                return None
            seconds = when.timestamp() - time.time()
    else:
        return None
    if not math.isfinite(seconds):
        return None
    return max(0.0, seconds)


def safe_message(text: str, limit: int = MAX_MESSAGE_CHARS) -> str:
    """One line, no key-like strings, at most ``limit`` characters."""
    text = _CONTROL_RE.sub(" ", text).strip()
    text = _SECRET_RE.sub("[redacted]", text)
    if len(text) > limit:
        text = text[: limit - 1].rstrip() + "…"
    return text


# --- internals ---------------------------------------------------------------------------


def _error_payload(body: bytes) -> Mapping[str, Any] | None:
    if not body:
        return None
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    if isinstance(data, dict):
        error = data.get("error")
        if isinstance(error, dict):
            return error
    return None


def _status_of(error: Mapping[str, Any]) -> int | None:
    code = error.get("code")
    status = _as_status(code)
    if status is not None:
        return status
    status = _as_status(error.get("http_status"))
    if status is not None:
        return status
    metadata = error.get("metadata")
    if isinstance(metadata, dict):
        status = _as_status(metadata.get("error_type"))
        if status is not None:
            return status
    return _as_status(error.get("error_type"))


def _as_status(value: object) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if 100 <= value <= 599 else None
    if isinstance(value, str):
        text = value.strip()
        if text.isdigit():
            number = int(text)
            return number if 100 <= number <= 599 else None
        return _CODE_NAMES.get(text.lower())
    return None


def _metadata(error: Mapping[str, Any] | None) -> dict[str, str]:
    out: dict[str, str] = {}
    if error is None:
        return out
    meta = error.get("metadata")
    if isinstance(meta, dict):
        for source, target in _COPIED_METADATA:
            value = meta.get(source)
            if isinstance(value, str | int | float) and not isinstance(value, bool):
                out[target] = safe_message(str(value), 100)
    error_type = error.get("error_type")
    if isinstance(error_type, str) and "error_type" not in out:
        out["error_type"] = safe_message(error_type, 100)
    availability = error.get("availability")
    if isinstance(availability, dict):
        code = availability.get("code")
        if isinstance(code, str):
            out["availability_code"] = safe_message(code, 100)
    return out


def _retry_after_from_body(error: Mapping[str, Any] | None) -> float | None:
    if error is None:
        return None
    meta = error.get("metadata")
    if isinstance(meta, dict):
        seconds = parse_retry_after(meta.get("retry_after_seconds"))
        if seconds is not None:
            return seconds
        headers = meta.get("headers")
        if isinstance(headers, dict):
            seconds = parse_retry_after(headers.get("Retry-After"))
            if seconds is not None:
                return seconds
    availability = error.get("availability")
    if isinstance(availability, dict):
        return parse_retry_after(availability.get("retry_after"))
    return None


def _upstream_message(error: Mapping[str, Any] | None) -> str:
    if error is None:
        return ""
    message = error.get("message")
    if not isinstance(message, str):
        return ""
    return safe_message(message, _MAX_UPSTREAM_MESSAGE_CHARS)


def _moderation(error: Mapping[str, Any] | None) -> tuple[str, str] | None:
    """``(blocked_by, reasons)`` when a 403 is a moderation flag or a guardrail block."""
    if error is None:
        return None
    meta = error.get("metadata")
    if not isinstance(meta, dict):
        return None
    for key, kind in (("reasons", "moderation"), ("patterns", "guardrail")):
        values = meta.get(key)
        if isinstance(values, list):
            joined = ",".join(str(v) for v in values if isinstance(v, str | int))
            return kind, safe_message(joined, 100)
    return None


def _build(
    status: int,
    error: Mapping[str, Any] | None,
    retry_after_header: float | None,
    *,
    fallback_status: int | None,
) -> UpstreamError:
    metadata = _metadata(error)
    if fallback_status is not None and fallback_status != status:
        metadata["http_status"] = str(fallback_status)
    upstream = _upstream_message(error)

    def message(ours: str) -> str:
        return safe_message(f"{ours}: {upstream}" if upstream else ours)

    retry_after = retry_after_header
    if retry_after is None:
        retry_after = _retry_after_from_body(error)

    if status == 429:
        return UpstreamRateLimitError(
            message("OpenRouter rate limit reached"),
            status=status,
            metadata=metadata,
            retry_after_s=retry_after,
        )
    if status == 401:
        return UpstreamAuthError(
            message("OpenRouter rejected the gateway's API key"), status=status, metadata=metadata
        )
    if status == 402:
        return UpstreamPaymentError(
            message("the OpenRouter account has too few credits"),
            status=status,
            metadata=metadata,
        )
    if status == 403:
        flagged = _moderation(error)
        if flagged is not None:
            blocked_by, reasons = flagged
            metadata["blocked_by"] = blocked_by
            metadata["reasons"] = reasons
            ours = (
                "the request was flagged by moderation"
                if blocked_by == "moderation"
                else "the request was blocked by a guardrail"
            )
            return ModerationError(message(ours), status=status, metadata=metadata)
        return UpstreamAuthError(
            message("OpenRouter denied the gateway's API key permission"),
            status=status,
            reason=REASON_PERMISSION_DENIED,
            metadata=metadata,
        )
    if status == 404:
        return UpstreamModelNotFoundError(
            message("the model was not found upstream"), status=status, metadata=metadata
        )
    if status == 413:
        return UpstreamBadRequestError(
            message("the request is too large for OpenRouter"),
            status=status,
            reason=REASON_PAYLOAD_TOO_LARGE,
            metadata=metadata,
        )
    if status == 422:
        return UpstreamBadRequestError(
            message("OpenRouter could not process the request"),
            status=status,
            reason=REASON_UNPROCESSABLE,
            metadata=metadata,
        )
    if status in (408, 504, 524):
        return UpstreamUnavailableError(
            message("OpenRouter timed out"),
            status=status,
            reason=REASON_TIMEOUT,
            metadata=metadata,
            retry_after_s=retry_after,
        )
    if status == 529:
        return UpstreamUnavailableError(
            message("the upstream provider is overloaded"),
            status=status,
            reason=REASON_OVERLOADED,
            metadata=metadata,
            retry_after_s=retry_after,
        )
    if 400 <= status < 500:
        return UpstreamBadRequestError(
            message("OpenRouter rejected the request"), status=status, metadata=metadata
        )
    if 500 <= status < 600:
        return UpstreamUnavailableError(
            message("OpenRouter or its provider is unavailable"),
            status=status,
            metadata=metadata,
            retry_after_s=retry_after,
        )
    return protocol_error(f"unexpected HTTP status {status}", status=status)
