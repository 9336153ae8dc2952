"""Every row of the error table, through the client against the simulator.

Each row asserts the domain class, reason, retryability and retry_after_s, and that the
message (and metadata) holds neither the API key nor the prompt text.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass

import pytest

from service.errors import (
    DeadlineExceededError,
    GatewayError,
    ModerationError,
    UpstreamAuthError,
    UpstreamBadRequestError,
    UpstreamModelNotFoundError,
    UpstreamPaymentError,
    UpstreamProtocolError,
    UpstreamRateLimitError,
    UpstreamUnavailableError,
)
from service.upstream import OpenRouterClient

from .conftest import API_KEY, PROMPT, ClientFactory, deadline_in, request


@dataclass(frozen=True)
class Row:
    directives: str
    cls: type[GatewayError]
    reason: str
    retryable: bool
    retry_after_s: float | None = None
    metadata: tuple[tuple[str, str], ...] = ()


ROWS: dict[str, Row] = {
    "400": Row("[[sim:error=400]]", UpstreamBadRequestError, "UPSTREAM_BAD_REQUEST", False),
    "401": Row("[[sim:error=401]]", UpstreamAuthError, "UPSTREAM_AUTH_FAILED", False),
    "402": Row("[[sim:error=402]]", UpstreamPaymentError, "UPSTREAM_INSUFFICIENT_CREDITS", False),
    "403-moderation": Row(
        "[[sim:error=403]]",
        ModerationError,
        "CONTENT_FLAGGED",
        False,
        metadata=(
            ("reasons", "harassment"),
            ("provider_name", "OpenAI"),
            ("model", "openai/gpt-4o-mini"),
        ),
    ),
    "403-guardrail": Row(
        "[[sim:error=403-guardrail]]",
        ModerationError,
        "CONTENT_FLAGGED",
        False,
        metadata=(("reasons", "ignore previous instructions"), ("blocked_by", "guardrail")),
    ),
    "403-key": Row("[[sim:error=403-key]]", UpstreamAuthError, "UPSTREAM_PERMISSION_DENIED", False),
    "404": Row("[[sim:error=404]]", UpstreamModelNotFoundError, "UPSTREAM_MODEL_NOT_FOUND", False),
    "408": Row("[[sim:error=408]]", UpstreamUnavailableError, "UPSTREAM_TIMEOUT", True),
    "413": Row("[[sim:error=413]]", UpstreamBadRequestError, "UPSTREAM_PAYLOAD_TOO_LARGE", False),
    "422": Row("[[sim:error=422]]", UpstreamBadRequestError, "UPSTREAM_UNPROCESSABLE", False),
    "429": Row(
        "[[sim:error=429]] [[sim:retry-after=0.2]]",
        UpstreamRateLimitError,
        "UPSTREAM_RATE_LIMITED",
        True,
        retry_after_s=0.2,
        metadata=(("provider_name", "OpenAI"),),
    ),
    "429-openrouter": Row(
        "[[sim:error=429-openrouter]] [[sim:retry-after=7]]",
        UpstreamRateLimitError,
        "UPSTREAM_RATE_LIMITED",
        True,
        retry_after_s=7.0,
    ),
    "500": Row("[[sim:error=500]]", UpstreamUnavailableError, "UPSTREAM_UNAVAILABLE", True),
    "502": Row("[[sim:error=502]]", UpstreamUnavailableError, "UPSTREAM_UNAVAILABLE", True),
    "503": Row(
        "[[sim:error=503]]",
        UpstreamUnavailableError,
        "UPSTREAM_UNAVAILABLE",
        True,
        retry_after_s=1.0,
    ),
    "524": Row("[[sim:error=524]]", UpstreamUnavailableError, "UPSTREAM_TIMEOUT", True),
    "529": Row("[[sim:error=529]]", UpstreamUnavailableError, "UPSTREAM_OVERLOADED", True),
    "new-shape": Row(
        "[[sim:error=new-shape]]",
        UpstreamRateLimitError,
        "UPSTREAM_RATE_LIMITED",
        True,
        retry_after_s=3.0,
        metadata=(
            ("error_type", "capacity_exhausted"),
            ("availability_code", "capacity_exhausted"),
        ),
    ),
    "unparseable": Row("[[sim:malformed]]", UpstreamProtocolError, "UPSTREAM_BAD_RESPONSE", True),
    "html-200": Row(
        "[[sim:bad-content-type]]", UpstreamProtocolError, "UPSTREAM_BAD_RESPONSE", True
    ),
    "read-timeout": Row("[[sim:hang]]", UpstreamUnavailableError, "UPSTREAM_TIMEOUT", True),
}


def assert_safe(error: GatewayError) -> None:
    for text in (error.message, str(error), repr(error), *error.metadata.values()):
        assert API_KEY not in text
        assert "SECRET" not in text
        assert PROMPT not in text
        assert "zebra" not in text
    assert len(error.message) <= 200
    assert all(isinstance(v, str) for v in error.metadata.values())


def assert_row(error: GatewayError, row: Row) -> None:
    assert type(error) is row.cls
    assert error.reason == row.reason
    assert error.retryable is row.retryable
    assert error.retry_after_s == row.retry_after_s
    for key, value in row.metadata:
        assert error.metadata[key] == value
    assert_safe(error)


@pytest.mark.parametrize("name", ROWS.keys())
async def test_unary_row(name: str, make_client: ClientFactory) -> None:
    row = ROWS[name]
    # No retries: each row is about the mapping, one attempt.
    client = make_client(max_retries=0, read_timeout_ms=200)
    await client.start()
    with pytest.raises(GatewayError) as info:
        await client.complete(request(row.directives), deadline=deadline_in(5))
    assert_row(info.value, row)


@pytest.mark.parametrize("name", [n for n in ROWS if n not in ("unparseable", "html-200")])
async def test_stream_row_before_first_event(name: str, make_client: ClientFactory) -> None:
    row = ROWS[name]
    client = make_client(max_retries=0, read_timeout_ms=200)
    await client.start()
    with pytest.raises(GatewayError) as info:
        async for _ in client.stream(request(row.directives), deadline=deadline_in(5)):
            pass
    assert_row(info.value, row)


async def test_upstream_status_metadata(client: OpenRouterClient) -> None:
    with pytest.raises(UpstreamPaymentError) as info:
        await client.complete(request("[[sim:error=402]]"), deadline=deadline_in(5))
    assert info.value.metadata["upstream_status"] == "402"
    assert info.value.status == 402


async def test_connection_refused(make_client: ClientFactory) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    # Nothing listens on the port now: every attempt is refused (and retried).
    client = make_client(base_url=f"http://127.0.0.1:{port}/api/v1")
    await client.start()
    with pytest.raises(UpstreamUnavailableError) as info:
        await client.complete(request(), deadline=deadline_in(5))
    assert info.value.reason == "UPSTREAM_CONNECTION_FAILED"
    assert info.value.retryable
    assert_safe(info.value)
    with pytest.raises(UpstreamUnavailableError) as streamed:
        async for _ in client.stream(request(), deadline=deadline_in(5)):
            pass
    assert streamed.value.reason == "UPSTREAM_CONNECTION_FAILED"


async def test_hang_with_short_deadline_is_deadline_exceeded(client: OpenRouterClient) -> None:
    loop_time = deadline_in(0)
    with pytest.raises(DeadlineExceededError) as info:
        await client.complete(request("[[sim:hang]]"), deadline=deadline_in(0.2))
    elapsed = deadline_in(0) - loop_time
    assert 0.19 <= elapsed < 0.5
    assert info.value.reason == "DEADLINE_EXCEEDED"
    assert_safe(info.value)


async def test_budget_from_settings_bounds_a_call_without_deadline(
    make_client: ClientFactory,
) -> None:
    client = make_client(timeout_ms=200)
    await client.start()
    with pytest.raises(DeadlineExceededError):
        await client.complete(request("[[sim:hang]]"), deadline=float("inf"))


async def test_wrong_key_is_auth_error_without_the_key(make_client: ClientFactory) -> None:
    from pydantic import SecretStr

    client = make_client(api_key=SecretStr("sk-or-v1-SECRET-wrong-key-000"))
    await client.start()
    with pytest.raises(UpstreamAuthError) as info:
        await client.complete(request(), deadline=deadline_in(5))
    assert "wrong-key" not in info.value.message
    # Our words only: OpenRouter's "User not found." goes to the DEBUG log, not the caller.
    assert info.value.message == "OpenRouter rejected the gateway's API key (upstream status 401)"
