"""The client helpers (llmgateway.client) driven by grpcio-testing: a scripted peer answers each
call, so retries, error details and stream assembly are checked without a server.

The key's interceptor cannot run over a grpcio-testing channel (grpc's interceptor passes
``wait_for_ready``, which the fake channel does not accept): test_client_channels.py checks the
transports against a real gateway instead."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import timedelta
from typing import Any, TypeVar

import grpc
import grpc_testing
import pytest
from google.protobuf import duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from llmgateway.client import (
    IncompleteStreamError,
    StreamAssembler,
    assemble,
    call_with_retry,
    channel_options,
    error_details,
    retry_delay,
    service_config,
)
from llmgateway.v1 import completion_service_pb2 as pb
from llmgateway.v1.completion_service_pb2_grpc import CompletionServiceStub

SERVICE = pb.DESCRIPTOR.services_by_name["CompletionService"]
COMPLETE = SERVICE.methods_by_name["Complete"]
STREAM = SERVICE.methods_by_name["StreamComplete"]
REQUEST = pb.CompleteRequest(messages=[pb.Message(role=pb.ROLE_USER, content="Hi")])
_T = TypeVar("_T")


@pytest.fixture
def peer() -> Any:
    return grpc_testing.channel([SERVICE], grpc_testing.strict_real_time())


@pytest.fixture
def pool() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(max_workers=1) as executor:
        yield executor


def _status_trailer(code: grpc.StatusCode, message: str, *details: Any) -> tuple[Any, ...]:
    status = status_pb2.Status(code=code.value[0], message=message)
    for detail in details:
        status.details.add().Pack(detail)
    return (("grpc-status-details-bin", status.SerializeToString()),)


def _quota_exceeded(delay_s: int) -> tuple[Any, ...]:
    return _status_trailer(
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "requests per minute used up",
        error_details_pb2.ErrorInfo(
            reason="QUOTA_EXCEEDED", domain="llmgateway.v1", metadata={"request_id": "r-1"}
        ),
        error_details_pb2.QuotaFailure(
            violations=[
                error_details_pb2.QuotaFailure.Violation(
                    subject="caller:alpha", description="60 requests per minute"
                )
            ]
        ),
        error_details_pb2.RetryInfo(retry_delay=duration_pb2.Duration(seconds=delay_s)),
    )


def _fail(peer: Any, trailer: tuple[Any, ...], code: grpc.StatusCode, message: str) -> None:
    _, _, rpc = peer.take_unary_unary(COMPLETE)
    rpc.terminate(pb.CompleteResponse(), trailer, code, message)


def _raised(future: Future[_T]) -> grpc.RpcError:
    error = future.exception(timeout=5)
    assert isinstance(error, grpc.RpcError)
    return error


def test_error_details_reads_every_kind_the_gateway_sends(
    peer: Any, pool: ThreadPoolExecutor
) -> None:
    call = pool.submit(CompletionServiceStub(peer).Complete, REQUEST)
    _fail(
        peer, _quota_exceeded(7), grpc.StatusCode.RESOURCE_EXHAUSTED, "requests per minute used up"
    )
    details = error_details(_raised(call))

    assert details.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert details.reason == "QUOTA_EXCEEDED"
    assert details.request_id == "r-1"
    assert details.retry_info is not None
    assert details.retry_info.retry_delay == timedelta(seconds=7)
    assert details.quota_failure is not None
    assert [v.subject for v in details.quota_failure.violations] == ["caller:alpha"]
    assert details.bad_request is None


def test_error_details_reads_bad_request_field_violations(
    peer: Any, pool: ThreadPoolExecutor
) -> None:
    call = pool.submit(CompletionServiceStub(peer).Complete, REQUEST)
    violation = error_details_pb2.BadRequest.FieldViolation(
        field="messages[0].content", description="too long"
    )
    trailer = _status_trailer(
        grpc.StatusCode.INVALID_ARGUMENT,
        "invalid",
        error_details_pb2.ErrorInfo(reason="INVALID_ARGUMENT", domain="llmgateway.v1"),
        error_details_pb2.BadRequest(field_violations=[violation]),
    )
    _fail(peer, trailer, grpc.StatusCode.INVALID_ARGUMENT, "invalid")
    details = error_details(_raised(call))

    assert details.bad_request is not None
    assert [(v.field, v.description) for v in details.bad_request.field_violations] == [
        ("messages[0].content", "too long")
    ]
    assert details.retry_info is None


def test_an_error_without_a_trailer_or_with_a_contradicting_one_has_only_code_and_message(
    peer: Any, pool: ThreadPoolExecutor
) -> None:
    stub = CompletionServiceStub(peer)
    plain = pool.submit(stub.Complete, REQUEST)
    _fail(peer, (), grpc.StatusCode.UNAVAILABLE, "connection refused")
    lying = pool.submit(stub.Complete, REQUEST)
    # A trailer whose code differs from the call's own is not believed.
    _fail(peer, _quota_exceeded(1), grpc.StatusCode.INTERNAL, "requests per minute used up")

    for future, code in ((plain, grpc.StatusCode.UNAVAILABLE), (lying, grpc.StatusCode.INTERNAL)):
        details = error_details(_raised(future))
        assert details.code == code
        assert details.error_info is None
        assert details.reason == ""
        assert retry_delay(_raised(future)) is None


def test_call_with_retry_waits_the_retry_info_delay_then_succeeds(
    peer: Any, pool: ThreadPoolExecutor
) -> None:
    stub = CompletionServiceStub(peer)
    slept: list[float] = []
    call = pool.submit(call_with_retry, lambda: stub.Complete(REQUEST), sleep=slept.append)
    _fail(
        peer, _quota_exceeded(3), grpc.StatusCode.RESOURCE_EXHAUSTED, "requests per minute used up"
    )
    _, request, rpc = peer.take_unary_unary(COMPLETE)
    rpc.terminate(pb.CompleteResponse(id="gen-2"), (), grpc.StatusCode.OK, "")

    assert call.result(timeout=5).id == "gen-2"
    assert request == REQUEST
    assert slept == [3.0]


def _rate_limited_without_delay() -> tuple[Any, ...]:
    return _status_trailer(
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "requests per minute used up",
        error_details_pb2.ErrorInfo(reason="UPSTREAM_RATE_LIMITED", domain="llmgateway.v1"),
    )


@pytest.mark.parametrize(
    ("trailer", "code"),
    [
        # The delay is longer than the caller wants to wait (a daily budget).
        (_quota_exceeded(3600), grpc.StatusCode.RESOURCE_EXHAUSTED),
        # No delay is known: retrying blindly would only hammer the limit.
        (_rate_limited_without_delay(), grpc.StatusCode.RESOURCE_EXHAUSTED),
        # Not a quota failure at all.
        (
            _status_trailer(grpc.StatusCode.INVALID_ARGUMENT, "requests per minute used up"),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
    ],
)
def test_call_with_retry_raises_at_once_when_waiting_would_not_help(
    peer: Any, pool: ThreadPoolExecutor, trailer: tuple[Any, ...], code: grpc.StatusCode
) -> None:
    stub = CompletionServiceStub(peer)
    slept: list[float] = []
    call = pool.submit(call_with_retry, lambda: stub.Complete(REQUEST), sleep=slept.append)
    _fail(peer, trailer, code, "requests per minute used up")

    assert error_details(_raised(call)).code == code
    assert slept == []


def test_call_with_retry_gives_up_after_its_attempts(peer: Any, pool: ThreadPoolExecutor) -> None:
    stub = CompletionServiceStub(peer)
    slept: list[float] = []
    call = pool.submit(
        call_with_retry, lambda: stub.Complete(REQUEST), attempts=2, sleep=slept.append
    )
    for _ in range(2):
        _fail(
            peer,
            _quota_exceeded(1),
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            "requests per minute used up",
        )

    assert error_details(_raised(call)).reason == "QUOTA_EXCEEDED"
    assert slept == [1.0]


def _stream(
    peer: Any, pool: ThreadPoolExecutor, messages: list[pb.StreamCompleteResponse]
) -> Callable[[], pb.CompleteResponse]:
    stub = CompletionServiceStub(peer)
    future = pool.submit(lambda: assemble(stub.StreamComplete(pb.StreamCompleteRequest())))
    _, _, rpc = peer.take_unary_stream(STREAM)
    for message in messages:
        rpc.send_response(message)
    rpc.terminate((), grpc.StatusCode.OK, "")
    return lambda: future.result(timeout=5)


def _delta(**fields: Any) -> pb.StreamCompleteResponse:
    return pb.StreamCompleteResponse(delta=pb.StreamDelta(**fields))


START = pb.StreamCompleteResponse(
    start=pb.StreamStart(id="gen-9", model="openai/gpt-4o-mini", provider="OpenAI")
)
END = pb.StreamCompleteResponse(
    end=pb.StreamEnd(
        finish_reason=pb.FINISH_REASON_TOOL_CALLS,
        native_finish_reason="tool_calls",
        usage=pb.Usage(prompt_tokens=5, completion_tokens=7, total_tokens=12),
    )
)


def test_a_stream_assembles_into_the_response_complete_would_give(
    peer: Any, pool: ThreadPoolExecutor
) -> None:
    result = _stream(
        peer,
        pool,
        [
            START,
            _delta(content="Hel", reasoning="Think"),
            _delta(content="lo", reasoning="ing"),
            _delta(
                tool_calls=[pb.ToolCallDelta(index=0, id="call-a", name="get", arguments='{"c')]
            ),
            _delta(tool_calls=[pb.ToolCallDelta(index=1, id="call-b", name="put", arguments="{}")]),
            _delta(tool_calls=[pb.ToolCallDelta(index=0, arguments='ity": "Oslo"}')]),
            END,
        ],
    )()

    assert result == pb.CompleteResponse(
        id="gen-9",
        model="openai/gpt-4o-mini",
        provider="OpenAI",
        content="Hello",
        reasoning="Thinking",
        tool_calls=[
            pb.ToolCall(id="call-a", name="get", arguments_json='{"city": "Oslo"}'),
            pb.ToolCall(id="call-b", name="put", arguments_json="{}"),
        ],
        finish_reason=pb.FINISH_REASON_TOOL_CALLS,
        native_finish_reason="tool_calls",
        usage=pb.Usage(prompt_tokens=5, completion_tokens=7, total_tokens=12),
    )
    assert json.loads(result.tool_calls[0].arguments_json) == {"city": "Oslo"}


def test_a_stream_that_ends_without_its_end_raises_with_what_arrived(
    peer: Any, pool: ThreadPoolExecutor
) -> None:
    result = _stream(peer, pool, [START, _delta(content="Hel")])
    with pytest.raises(IncompleteStreamError) as raised:
        result()
    assert raised.value.partial.content == "Hel"
    assert raised.value.partial.id == "gen-9"


def test_the_assembler_can_be_fed_while_the_caller_shows_the_text() -> None:
    assembler = StreamAssembler()
    shown = []
    for message in (START, _delta(content="a"), _delta(content="b"), END):
        assembler.add(message)
        shown.append(assembler.partial().content)
    assert shown == ["", "a", "ab", "ab"]
    assert assembler.ended
    assert assembler.result().usage.total_tokens == 12


def test_the_recommended_service_config_retries_only_unavailable() -> None:
    config = service_config()
    (method,) = config["methodConfig"]
    assert method["name"] == [{"service": "llmgateway.v1.CompletionService"}]
    assert method["retryPolicy"]["retryableStatusCodes"] == ["UNAVAILABLE"]
    assert config["loadBalancingConfig"] == [{"round_robin": {}}]
    options = dict(channel_options())
    assert json.loads(str(options["grpc.service_config"])) == config
    assert options["grpc.max_receive_message_length"] == 32 * 1024 * 1024
    assert grpc.StatusCode.UNAVAILABLE.value[0] == code_pb2.UNAVAILABLE
