"""The status/body -> domain error table, on the real error bodies from the notes."""

from __future__ import annotations

import logging
from typing import Any

import aiohttp
import orjson
import pytest

from service.errors import (
    DeadlineExceededError,
    ModerationError,
    UpstreamAuthError,
    UpstreamBadRequestError,
    UpstreamError,
    UpstreamModelNotFoundError,
    UpstreamPaymentError,
    UpstreamRateLimitError,
    UpstreamUnavailableError,
)
from service.upstream.errors import (
    MAX_MESSAGE_CHARS,
    UPSTREAM_DETAIL_CHARS,
    attempt_failure,
    error_from_payload,
    error_from_response,
    parse_retry_after,
    safe_message,
)

from . import samples

ROWS: list[tuple[int, Any, type[UpstreamError], str]] = [
    (400, samples.ERR_400, UpstreamBadRequestError, "UPSTREAM_BAD_REQUEST"),
    (401, samples.ERR_401, UpstreamAuthError, "UPSTREAM_AUTH_FAILED"),
    (402, samples.ERR_402, UpstreamPaymentError, "UPSTREAM_INSUFFICIENT_CREDITS"),
    (403, samples.ERR_403_MODERATION, ModerationError, "CONTENT_FLAGGED"),
    (403, samples.ERR_403_GUARDRAIL, ModerationError, "CONTENT_FLAGGED"),
    (
        403,
        {"error": {"code": 403, "message": "Key disabled"}},
        UpstreamAuthError,
        "UPSTREAM_PERMISSION_DENIED",
    ),
    (404, samples.ERR_404, UpstreamModelNotFoundError, "UPSTREAM_MODEL_NOT_FOUND"),
    (408, {"error": {"code": 408, "message": "t"}}, UpstreamUnavailableError, "UPSTREAM_TIMEOUT"),
    (
        413,
        {"error": {"code": 413, "message": "big"}},
        UpstreamBadRequestError,
        "UPSTREAM_PAYLOAD_TOO_LARGE",
    ),
    (
        422,
        {"error": {"code": 422, "message": "no"}},
        UpstreamBadRequestError,
        "UPSTREAM_UNPROCESSABLE",
    ),
    (429, samples.ERR_429_FREE, UpstreamRateLimitError, "UPSTREAM_RATE_LIMITED"),
    (429, samples.ERR_NEW_SHAPE, UpstreamRateLimitError, "UPSTREAM_RATE_LIMITED"),
    (
        500,
        {"error": {"code": 500, "message": "x"}},
        UpstreamUnavailableError,
        "UPSTREAM_UNAVAILABLE",
    ),
    (502, b"<html>Bad gateway</html>", UpstreamUnavailableError, "UPSTREAM_UNAVAILABLE"),
    (503, b"", UpstreamUnavailableError, "UPSTREAM_UNAVAILABLE"),
    (524, {"error": {"code": 524, "message": "x"}}, UpstreamUnavailableError, "UPSTREAM_TIMEOUT"),
    (
        529,
        {"error": {"code": 529, "message": "x"}},
        UpstreamUnavailableError,
        "UPSTREAM_OVERLOADED",
    ),
    (
        418,
        {"error": {"code": 418, "message": "teapot"}},
        UpstreamBadRequestError,
        "UPSTREAM_BAD_REQUEST",
    ),
]


@pytest.mark.parametrize(("status", "body", "cls", "reason"), ROWS)
def test_table(status: int, body: Any, cls: type[UpstreamError], reason: str) -> None:
    raw = body if isinstance(body, bytes) else orjson.dumps(body)
    error = error_from_response(status, raw, {})
    assert type(error) is cls
    assert error.reason == reason
    assert error.status == status
    assert error.metadata["upstream_status"] == str(status)
    assert all(isinstance(v, str) for v in error.metadata.values())
    assert len(error.message) <= MAX_MESSAGE_CHARS
    assert "<html>" not in error.message
    assert "user_" not in error.message


def test_moderation_metadata_never_holds_the_flagged_prompt() -> None:
    error = error_from_response(403, orjson.dumps(samples.ERR_403_MODERATION), {})
    assert error.metadata["reasons"] == "harassment,hate"
    assert error.metadata["provider_name"] == "OpenAI"
    assert error.metadata["model"] == "openai/gpt-4o"
    assert error.metadata["blocked_by"] == "moderation"
    assert samples.FLAGGED_PROMPT not in error.message
    assert all(samples.FLAGGED_PROMPT not in v for v in error.metadata.values())
    guard = error_from_response(403, orjson.dumps(samples.ERR_403_GUARDRAIL), {})
    assert guard.metadata["reasons"] == "ignore previous instructions"
    assert guard.metadata["blocked_by"] == "guardrail"


def test_provider_raw_body_is_never_in_the_message() -> None:
    error = error_from_response(429, orjson.dumps(samples.ERR_429_PROVIDER), {})
    assert "temporarily rate-limited" not in error.message
    assert error.metadata["provider_name"] == "Venice"
    assert error.retry_after_s == 17


def test_retry_after_sources_in_order() -> None:
    body = orjson.dumps(samples.ERR_429_PROVIDER)
    assert error_from_response(429, body, {"Retry-After": "0.25"}).retry_after_s == 0.25
    assert error_from_response(429, body, {}).retry_after_s == 17
    new_shape = error_from_response(429, orjson.dumps(samples.ERR_NEW_SHAPE), {})
    assert new_shape.retry_after_s == 3
    assert new_shape.metadata["error_type"] == "capacity_exhausted"
    assert new_shape.metadata["availability_code"] == "capacity_exhausted"
    free = error_from_response(429, orjson.dumps(samples.ERR_429_FREE), {})
    assert free.retry_after_s is None
    assert free.metadata["limit_source"] == "openrouter_free_tier_daily"
    assert error_from_response(503, b"", {"Retry-After": "2"}).retry_after_s == 2


def test_parse_retry_after() -> None:
    assert parse_retry_after("17") == 17
    assert parse_retry_after(" 0.2 ") == 0.2
    assert parse_retry_after(16.007) == 16.007
    assert parse_retry_after("-3") == 0
    assert parse_retry_after("soon") is None
    assert parse_retry_after(True) is None
    assert parse_retry_after("nan") is None
    past = parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT")
    assert past == 0


def test_string_and_named_codes() -> None:
    assert error_from_payload({"code": "server_error", "message": "m"}).status == 500
    assert error_from_payload({"code": "429", "message": "m"}).status == 429
    assert type(error_from_payload({"message": "m"}, http_status=200)) is UpstreamUnavailableError
    typed = error_from_payload(
        {"message": "m", "metadata": {"error_type": "context_length_exceeded"}}
    )
    assert type(typed) is UpstreamBadRequestError


def test_messages_are_scrubbed_and_capped() -> None:
    body = {"error": {"code": 400, "message": "bad key sk-or-v1-abcdef0123456789 " + "x" * 500}}
    error = error_from_response(400, orjson.dumps(body), {})
    assert "sk-or-v1" not in error.message
    assert len(error.message) <= MAX_MESSAGE_CHARS
    assert safe_message("a\nb\x00c") == "a b c"
    assert "Bearer" not in safe_message("Authorization: Bearer abc.def")


def test_retryability() -> None:
    retryable = {408, 429, 500, 502, 503, 524, 529}
    for status in (400, 401, 402, 403, 404, 408, 413, 422, 429, 500, 502, 503, 524, 529):
        error = error_from_response(status, b"", {})
        assert error.resend is (status in retryable), status
        assert error.retryable is (status in retryable), status


@pytest.mark.parametrize(
    ("exc", "cls", "reason"),
    [
        (aiohttp.ConnectionTimeoutError(), UpstreamUnavailableError, "UPSTREAM_CONNECTION_FAILED"),
        (aiohttp.SocketTimeoutError(), UpstreamUnavailableError, "UPSTREAM_TIMEOUT"),
        (TimeoutError(), UpstreamUnavailableError, "UPSTREAM_TIMEOUT"),
        (aiohttp.ServerDisconnectedError(), UpstreamUnavailableError, "UPSTREAM_CONNECTION_FAILED"),
        (aiohttp.ClientPayloadError(), UpstreamUnavailableError, "UPSTREAM_CONNECTION_FAILED"),
        (aiohttp.ClientOSError(), UpstreamUnavailableError, "UPSTREAM_CONNECTION_FAILED"),
    ],
)
def test_transport_failures_share_the_table(
    exc: BaseException, cls: type[UpstreamError], reason: str
) -> None:
    error = attempt_failure(exc, deadline_passed=False)
    assert type(error) is cls
    assert error.reason == reason
    assert isinstance(error, UpstreamError)
    assert error.resend


def test_our_own_timer_is_the_deadline_not_the_transport() -> None:
    assert type(attempt_failure(TimeoutError(), deadline_passed=True)) is DeadlineExceededError
    # A transport failure stays one even when the budget ran out at the same moment.
    refused = attempt_failure(aiohttp.ServerDisconnectedError(), deadline_passed=True)
    assert refused.reason == "UPSTREAM_CONNECTION_FAILED"


def test_upstream_text_goes_only_to_the_debug_log(caplog: pytest.LogCaptureFixture) -> None:
    echoed = "cobalt-lynx-9902 wants a poem"
    raw = {"error": {"message": f"bad input {echoed} sk-or-v1-abcdef0123456789 " + "x" * 600}}
    body = {
        "error": {
            "code": 400,
            "message": f"Provider returned error: {echoed}",
            "metadata": {"raw": orjson.dumps(raw).decode(), "provider_name": "OpenAI"},
        }
    }
    with caplog.at_level(logging.INFO):
        quiet = error_from_response(400, orjson.dumps(body), {})
    assert not caplog.records
    assert quiet.message == "OpenRouter rejected the request (upstream status 400)"
    assert quiet.metadata == {"provider_name": "OpenAI", "upstream_status": "400"}

    with caplog.at_level(logging.DEBUG, logger="service.upstream.errors"):
        error_from_response(400, orjson.dumps(body), {})
    (record,) = caplog.records
    assert record.levelno == logging.DEBUG
    assert echoed in record.getMessage()
    assert "sk-or-v1" not in record.getMessage()
    assert isinstance(record.args, tuple)
    assert all(len(arg) <= UPSTREAM_DETAIL_CHARS for arg in record.args if isinstance(arg, str))
