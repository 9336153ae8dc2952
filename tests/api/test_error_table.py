"""The contract's error table, row by row, as a client reads it from the rich status.

Each upstream failure is chosen per request with a simulator directive. Retries are off
(``max_retries=0``) except where a test proves that a retry happens.
"""

from __future__ import annotations

from contextlib import AsyncExitStack
from dataclasses import dataclass

import grpc
import pytest
from google.protobuf import duration_pb2
from google.rpc import error_details_pb2
from llmgateway.v1 import completion_service_pb2 as pb

from service.simulator import run_simulator
from tests.api.support import (
    PROMPT,
    assert_nothing_leaks,
    chat_requests,
    complete_error,
    drain,
    stream,
    stream_error,
)
from tests.harness import Harness, RichError, auth, rich_error, serve_gateway, start_gateway, user

NO_RETRIES = {"max_retries": 0}
REQUEST_ID = "req-table-1"
METADATA = (*auth(), ("x-request-id", REQUEST_ID))

C = grpc.StatusCode


@dataclass(frozen=True)
class Row:
    directive: str
    code: grpc.StatusCode
    reason: str
    retry_after_s: float | None = None
    upstream_status: str | None = None


# Upstream HTTP failures: the same mapping for Complete and StreamComplete.
HTTP_ROWS = [
    Row("error=400", C.INVALID_ARGUMENT, "UPSTREAM_BAD_REQUEST", upstream_status="400"),
    Row("error=401", C.INTERNAL, "UPSTREAM_AUTH_FAILED", upstream_status="401"),
    Row("error=402", C.FAILED_PRECONDITION, "UPSTREAM_INSUFFICIENT_CREDITS", upstream_status="402"),
    Row("error=403", C.PERMISSION_DENIED, "CONTENT_FLAGGED", upstream_status="403"),
    Row("error=403-guardrail", C.PERMISSION_DENIED, "CONTENT_FLAGGED", upstream_status="403"),
    Row("error=403-key", C.INTERNAL, "UPSTREAM_PERMISSION_DENIED", upstream_status="403"),
    Row("error=404", C.NOT_FOUND, "UPSTREAM_MODEL_NOT_FOUND", upstream_status="404"),
    Row("error=408", C.UNAVAILABLE, "UPSTREAM_TIMEOUT", upstream_status="408"),
    Row("error=413", C.INVALID_ARGUMENT, "UPSTREAM_PAYLOAD_TOO_LARGE", upstream_status="413"),
    Row("error=422", C.INVALID_ARGUMENT, "UPSTREAM_UNPROCESSABLE", upstream_status="422"),
    Row("error=429", C.RESOURCE_EXHAUSTED, "UPSTREAM_RATE_LIMITED", 1.0, "429"),
    Row("error=429 retry-after=0.2", C.RESOURCE_EXHAUSTED, "UPSTREAM_RATE_LIMITED", 0.2),
    Row("error=429-openrouter", C.RESOURCE_EXHAUSTED, "UPSTREAM_RATE_LIMITED", 1.0, "429"),
    Row("error=500", C.UNAVAILABLE, "UPSTREAM_UNAVAILABLE", upstream_status="500"),
    Row("error=502", C.UNAVAILABLE, "UPSTREAM_UNAVAILABLE", upstream_status="502"),
    Row("error=503", C.UNAVAILABLE, "UPSTREAM_UNAVAILABLE", 1.0, "503"),
    Row("error=504", C.UNAVAILABLE, "UPSTREAM_TIMEOUT", upstream_status="504"),
    Row("error=524", C.UNAVAILABLE, "UPSTREAM_TIMEOUT", upstream_status="524"),
    Row("error=529", C.UNAVAILABLE, "UPSTREAM_OVERLOADED", upstream_status="529"),
    Row("error=new-shape", C.RESOURCE_EXHAUSTED, "UPSTREAM_RATE_LIMITED", 3.0, "429"),
    Row("bad-content-type", C.UNAVAILABLE, "UPSTREAM_BAD_RESPONSE"),
]

UNARY_ROWS = [
    Row("malformed", C.UNAVAILABLE, "UPSTREAM_BAD_RESPONSE"),
    # HTTP 200 whose choice carries the provider's error: never an OK answer.
    Row("choice-error", C.UNAVAILABLE, "UPSTREAM_UNAVAILABLE", upstream_status="502"),
    # The socket closes without a response.
    Row("drop-after=0", C.UNAVAILABLE, "UPSTREAM_CONNECTION_FAILED"),
]

# Failures after the stream started: some deltas, then the mapped status and no `end`.
MID_STREAM_ROWS = [
    Row("mid-stream-error", C.UNAVAILABLE, "UPSTREAM_UNAVAILABLE", upstream_status="502"),
    Row("mid-stream-error=string-code", C.UNAVAILABLE, "UPSTREAM_UNAVAILABLE", None, "500"),
    Row("mid-stream-error=empty-choices", C.UNAVAILABLE, "UPSTREAM_UNAVAILABLE", None, "502"),
    # The error chunk says 400 after a `length` finish: mapped like any upstream 400.
    Row("mid-stream-error=minimax", C.INVALID_ARGUMENT, "UPSTREAM_BAD_REQUEST", None, "400"),
    Row("drop-after=3", C.UNAVAILABLE, "UPSTREAM_STREAM_TRUNCATED"),
    Row("malformed", C.UNAVAILABLE, "UPSTREAM_BAD_RESPONSE"),
]


async def assert_row(error: RichError, row: Row, gw: Harness) -> None:
    finished = await gw.wait_finished()
    assert (error.code, error.info.reason) == (row.code, row.reason)
    assert error.info.domain == "llmgateway.v1"
    assert error.info.metadata["request_id"] == REQUEST_ID
    if row.upstream_status is not None:
        assert error.info.metadata["upstream_status"] == row.upstream_status
    retry = [d for d in error.details if isinstance(d, error_details_pb2.RetryInfo)]
    if row.retry_after_s is None:
        assert retry == []
    else:
        seconds = int(row.retry_after_s)
        nanos = round((row.retry_after_s - seconds) * 1e9)
        assert [r.retry_delay for r in retry] == [
            duration_pb2.Duration(seconds=seconds, nanos=nanos)
        ]
    assert not [d for d in error.details if isinstance(d, error_details_pb2.BadRequest)]
    assert_nothing_leaks(error)
    assert error.message
    assert [code for _, code in finished] == [row.code]


def directives(names: str) -> str:
    """``"error=429 retry-after=0.2"`` -> ``"[[sim:error=429]] [[sim:retry-after=0.2]]"``."""
    return " ".join(f"[[sim:{name}]]" for name in names.split())


def _ids(rows: list[Row]) -> list[str]:
    return [row.directive.replace(" ", "+") for row in rows]


@pytest.mark.parametrize("row", HTTP_ROWS + UNARY_ROWS, ids=_ids(HTTP_ROWS + UNARY_ROWS))
async def test_complete_maps_upstream_failures(row: Row) -> None:
    async with start_gateway(openrouter=NO_RETRIES) as gw:
        request = pb.CompleteRequest(messages=[user(f"{PROMPT} {directives(row.directive)}")])
        error = await complete_error(gw, request, METADATA)
        await assert_row(error, row, gw)
        assert len(chat_requests(gw.sim)) == 1


@pytest.mark.parametrize("row", HTTP_ROWS, ids=_ids(HTTP_ROWS))
async def test_stream_maps_upstream_failures_before_any_message(row: Row) -> None:
    async with start_gateway(openrouter=NO_RETRIES) as gw:
        call = gw.stub.StreamComplete(
            pb.StreamCompleteRequest(messages=[user(f"{PROMPT} {directives(row.directive)}")]),
            metadata=METADATA,
        )
        outcome = await drain(call)
        assert outcome.messages == []
        assert outcome.error is not None
        assert outcome.trailing["x-request-id"] == REQUEST_ID
        await assert_row(rich_error(outcome.error), row, gw)


@pytest.mark.parametrize("row", MID_STREAM_ROWS, ids=_ids(MID_STREAM_ROWS))
async def test_stream_cut_after_it_started_ends_with_the_mapped_status_and_no_end(
    row: Row,
) -> None:
    # Retries stay on: a stream that already relayed output must not be sent again.
    async with start_gateway() as gw:
        call = gw.stub.StreamComplete(
            pb.StreamCompleteRequest(
                messages=[user(f"{PROMPT} {directives(row.directive)} [[sim:tokens=10]]")]
            ),
            metadata=METADATA,
        )
        outcome = await drain(call)
        assert outcome.kinds[0] == "start"
        assert "delta" in outcome.kinds
        assert "end" not in outcome.kinds
        assert outcome.error is not None
        await assert_row(rich_error(outcome.error), row, gw)
        assert len(chat_requests(gw.sim)) == 1


async def test_moderation_metadata_names_the_reason_but_never_the_flagged_input() -> None:
    async with start_gateway(openrouter=NO_RETRIES) as gw:
        error = await complete_error(
            gw, pb.CompleteRequest(messages=[user(f"{PROMPT} [[sim:error=403]]")]), METADATA
        )
        assert error.info.metadata["blocked_by"] == "moderation"
        assert error.info.metadata["reasons"] == "harassment"
        assert "zebra" not in str(error.info)


async def test_connection_refused_is_unavailable_connection_failed() -> None:
    async with AsyncExitStack() as upstream:
        sim = await upstream.enter_async_context(run_simulator())
        async with serve_gateway(sim, openrouter=NO_RETRIES) as gw:
            # OpenRouter goes away after start-up; the catalog is already cached.
            await upstream.aclose()
            errors = [
                await complete_error(gw, pb.CompleteRequest(messages=[user(PROMPT)]), METADATA),
                await stream_error(gw, pb.StreamCompleteRequest(messages=[user(PROMPT)]), METADATA),
            ]
            for error in errors:
                assert (error.code, error.info.reason) == (
                    C.UNAVAILABLE,
                    "UPSTREAM_CONNECTION_FAILED",
                )
                assert error.info.domain == "llmgateway.v1"
                assert error.info.metadata["request_id"] == REQUEST_ID
                assert_nothing_leaks(error)


# --- retries -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "directive",
    ["error=500", "error=503 retry-after=0", "error=429 retry-after=0.05"],
)
async def test_a_transient_failure_is_retried_and_the_call_succeeds(directive: str) -> None:
    prompt = f"Retry me {directives(directive)} [[sim:fail-times=1]] [[sim:tokens=3]]"
    async with start_gateway() as gw:
        reply = await gw.stub.Complete(pb.CompleteRequest(messages=[user(prompt)]), metadata=auth())
        assert reply.usage.completion_tokens == 3
        first, second = chat_requests(gw.sim)
        assert first.body == second.body
        [(record, code)] = await gw.wait_finished()
        assert code is C.OK
        assert record.stats.retries == 1


async def test_a_stream_failing_before_its_first_event_is_retried() -> None:
    prompt = "Retry me [[sim:error=502]] [[sim:fail-times=1]] [[sim:tokens=3]]"
    async with start_gateway() as gw:
        outcome = await stream(gw, pb.StreamCompleteRequest(messages=[user(prompt)]))
        assert outcome.error is None
        assert outcome.shape == ["start", "delta", "end"]
        assert len(outcome.content.split()) == 3
        assert len(chat_requests(gw.sim)) == 2


async def test_a_client_error_is_not_retried() -> None:
    prompt = "No retry [[sim:error=400]] [[sim:fail-times=1]]"
    async with start_gateway() as gw:
        error = await complete_error(gw, pb.CompleteRequest(messages=[user(prompt)]))
        assert error.info.reason == "UPSTREAM_BAD_REQUEST"
        assert len(chat_requests(gw.sim)) == 1


async def test_retries_stop_after_max_retries() -> None:
    async with start_gateway(openrouter={"max_retries": 2}) as gw:
        error = await complete_error(
            gw, pb.CompleteRequest(messages=[user("Always down [[sim:error=502]]")])
        )
        assert error.info.reason == "UPSTREAM_UNAVAILABLE"
        assert len(chat_requests(gw.sim)) == 3
