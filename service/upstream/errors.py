"""The one table from OpenRouter failures (HTTP status, error body, transport) to domain errors.

Everything that turns an upstream failure into a ``service.errors`` class goes through here,
so the mapping is read (and tested) in one place. ``_BY_STATUS`` and ``_BY_EXCEPTION`` are
that table as data::

    failure                     class                       reason
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

Whether the client sends a failed attempt again is the class's ``resend`` flag, nothing else.

The status comes from ``error.code`` (int, digit string, or a name such as ``server_error``),
else ``error.http_status`` (the 2026 availability shape), else the HTTP status. Messages are
our own words, fixed per row, plus the status: never OpenRouter's ``error.message`` (a provider
may echo the prompt in it), the raw body, ``metadata.raw`` (the provider's body) or
``flagged_input`` (prompt text). ``error.message`` and ``metadata.raw`` go, capped at
``UPSTREAM_DETAIL_CHARS`` and redacted, to the DEBUG log only. ErrorInfo metadata holds only
identifiers OpenRouter gives (provider, error type, limit source, model slug, moderation
categories), each capped.
"""

from __future__ import annotations

import email.utils
import logging
import math
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

import aiohttp
import orjson

from service.errors import (
    DeadlineExceededError,
    GatewayError,
    ModerationError,
    Reason,
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

logger = logging.getLogger(__name__)

MAX_MESSAGE_CHARS: Final = 200
UPSTREAM_DETAIL_CHARS: Final = 256
"""At most this much of OpenRouter's own text reaches the (DEBUG) log, per field."""

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
        f"could not reach OpenRouter: {what}", reason=Reason.UPSTREAM_CONNECTION_FAILED
    )


def read_timeout_error(
    what: str = "no data from OpenRouter within the read timeout",
) -> UpstreamUnavailableError:
    return UpstreamUnavailableError(what, reason=Reason.UPSTREAM_TIMEOUT)


def deadline_error(
    what: str = "the deadline for the upstream call ran out",
) -> DeadlineExceededError:
    return DeadlineExceededError(what)


def protocol_error(what: str, *, status: int | None = None) -> UpstreamProtocolError:
    return UpstreamProtocolError(f"OpenRouter sent an unreadable answer: {what}", status=status)


def truncated_error() -> StreamTruncatedError:
    return StreamTruncatedError("the OpenRouter stream ended before it was complete")


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


def _log_upstream_detail(status: int, error: Mapping[str, Any] | None) -> None:
    """OpenRouter's own words, for an operator debugging: DEBUG only, capped and redacted."""
    if error is None or not logger.isEnabledFor(logging.DEBUG):
        return
    message = error.get("message")
    meta = error.get("metadata")
    raw = meta.get("raw") if isinstance(meta, dict) else None
    if raw is not None and not isinstance(raw, str):
        raw = orjson.dumps(raw, default=str).decode()
    logger.debug(
        "OpenRouter error detail (status %d): message=%r raw=%r",
        status,
        safe_message(message, UPSTREAM_DETAIL_CHARS) if isinstance(message, str) else None,
        safe_message(raw, UPSTREAM_DETAIL_CHARS) if raw is not None else None,
    )


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


@dataclass(frozen=True, slots=True)
class _Failure:
    """One row of the table: the class to raise, its reason when it refines the class's own,
    and our words for it."""

    cls: type[UpstreamError]
    message: str
    reason: Reason | None = None


_BAD_REQUEST: Final = _Failure(UpstreamBadRequestError, "OpenRouter rejected the request")
_UNAVAILABLE: Final = _Failure(
    UpstreamUnavailableError, "OpenRouter or its provider is unavailable"
)
_TIMED_OUT: Final = _Failure(
    UpstreamUnavailableError, "OpenRouter timed out", Reason.UPSTREAM_TIMEOUT
)

# HTTP statuses (or ``error.code``) with a row of their own; other 4xx and 5xx take the
# rows above, and 403 is first checked for a moderation or guardrail block.
_BY_STATUS: Final[Mapping[int, _Failure]] = {
    401: _Failure(UpstreamAuthError, "OpenRouter rejected the gateway's API key"),
    402: _Failure(UpstreamPaymentError, "the OpenRouter account has too few credits"),
    403: _Failure(
        UpstreamAuthError,
        "OpenRouter denied the gateway's API key permission",
        Reason.UPSTREAM_PERMISSION_DENIED,
    ),
    404: _Failure(UpstreamModelNotFoundError, "the model was not found upstream"),
    408: _TIMED_OUT,
    413: _Failure(
        UpstreamBadRequestError,
        "the request is too large for OpenRouter",
        Reason.UPSTREAM_PAYLOAD_TOO_LARGE,
    ),
    422: _Failure(
        UpstreamBadRequestError,
        "OpenRouter could not process the request",
        Reason.UPSTREAM_UNPROCESSABLE,
    ),
    429: _Failure(UpstreamRateLimitError, "OpenRouter rate limit reached"),
    504: _TIMED_OUT,
    524: _TIMED_OUT,
    529: _Failure(
        UpstreamUnavailableError, "the upstream provider is overloaded", Reason.UPSTREAM_OVERLOADED
    ),
}

_READ_TIMEOUT: Final = _Failure(
    UpstreamUnavailableError,
    "no data from OpenRouter within the read timeout",
    Reason.UPSTREAM_TIMEOUT,
)

# Failures below HTTP, looked up along the exception's MRO (so the most specific row wins:
# aiohttp's timeouts are also ClientErrors). A ClientError without a row of its own is a
# connection failure named by its type.
_BY_EXCEPTION: Final[Mapping[type[BaseException], _Failure]] = {
    aiohttp.ConnectionTimeoutError: _Failure(
        UpstreamUnavailableError,
        "could not reach OpenRouter: connecting timed out",
        Reason.UPSTREAM_CONNECTION_FAILED,
    ),
    aiohttp.ServerTimeoutError: _READ_TIMEOUT,
    TimeoutError: _READ_TIMEOUT,
    aiohttp.ClientConnectorError: _Failure(
        UpstreamUnavailableError,
        "could not reach OpenRouter: the connection was refused or could not be made",
        Reason.UPSTREAM_CONNECTION_FAILED,
    ),
    aiohttp.ServerDisconnectedError: _Failure(
        UpstreamUnavailableError,
        "could not reach OpenRouter: the server closed the connection",
        Reason.UPSTREAM_CONNECTION_FAILED,
    ),
    aiohttp.ClientPayloadError: _Failure(
        UpstreamUnavailableError,
        "could not reach OpenRouter: the connection closed mid-answer",
        Reason.UPSTREAM_CONNECTION_FAILED,
    ),
}


def attempt_failure(exc: BaseException, *, deadline_passed: bool) -> GatewayError:
    """A failed attempt below HTTP (``TimeoutError`` or an aiohttp ``ClientError``).

    ``deadline_passed`` says our own budget timer fired: then it is the caller's deadline,
    not the transport's failure.
    """
    if deadline_passed and isinstance(exc, TimeoutError):
        return deadline_error()
    for cls in type(exc).__mro__:
        row = _BY_EXCEPTION.get(cls)
        if row is not None:
            return row.cls(row.message, reason=row.reason)
    return connection_error(type(exc).__name__)


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
    _log_upstream_detail(status, error)

    def message(ours: str) -> str:
        return f"{ours} (upstream status {status})"

    retry_after = retry_after_header
    if retry_after is None:
        retry_after = _retry_after_from_body(error)

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
    row = _BY_STATUS.get(status)
    if row is None:
        if 400 <= status < 500:
            row = _BAD_REQUEST
        elif 500 <= status < 600:
            row = _UNAVAILABLE
        else:
            return protocol_error(f"unexpected HTTP status {status}", status=status)
    # A delay is only worth passing on where waiting can help.
    delay = retry_after if row.cls.resend else None
    return row.cls(
        message(row.message),
        status=status,
        reason=row.reason,
        metadata=metadata,
        retry_after_s=delay,
    )
