"""Spans: a server span per RPC, a client span per upstream attempt, W3C context in and out."""

from __future__ import annotations

import grpc
import pytest
from llmgateway.v1 import completion_service_pb2 as pb
from opentelemetry.trace import SpanKind, StatusCode

from service.telemetry import Telemetry
from tests.harness import auth, start_gateway, user
from tests.telemetry.support import (
    SERVICE,
    Captured,
    attrs,
    key,
    sums,
    traceparent_of,
    traceparents,
)

INCOMING_TRACE = "0af7651916cd43dd8448eb211c80319c"
INCOMING_SPAN = "b7ad6b7169203331"
INCOMING = f"00-{INCOMING_TRACE}-{INCOMING_SPAN}-01"


async def test_a_unary_call_is_a_server_span_with_one_client_span_per_attempt(
    otel: Captured,
) -> None:
    metadata = (*auth(), ("x-request-id", "req-span-1"))
    async with start_gateway(telemetry=otel.telemetry) as gw:
        reply = await gw.stub.Complete(
            pb.CompleteRequest(messages=[user("Hello [[sim:tokens=5]]")]), metadata=metadata
        )
        await gw.wait_finished(1)
        sim_base = gw.sim.base_url
        sent = traceparents(gw.sim)
        port = gw.server.port

    server = otel.server_span("Complete")
    assert server.kind is SpanKind.SERVER
    assert server.parent is None
    assert server.status.status_code is StatusCode.UNSET
    assert attrs(server) == {
        "rpc.system": "grpc",
        "rpc.service": SERVICE,
        "rpc.method": "Complete",
        "rpc.grpc.status_code": 0,
        "server.address": "127.0.0.1",
        "server.port": port,
        "llmgateway.request.id": "req-span-1",
        "llmgateway.caller.id": "alpha",
        "gen_ai.operation.name": "chat",
        "gen_ai.request.model": "openai/gpt-4o-mini",
        "gen_ai.response.model": reply.model,
        "gen_ai.response.id": reply.id,
        "gen_ai.response.finish_reasons": ("stop",),
        "gen_ai.usage.input_tokens": reply.usage.prompt_tokens,
        "gen_ai.usage.output_tokens": 5,
    }

    [client] = otel.client_spans()
    assert otel.children(server) == [client]
    assert client.context.trace_id == server.context.trace_id
    assert client.name == "chat openai/gpt-4o-mini"
    assert client.status.status_code is StatusCode.UNSET
    assert attrs(client) == {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": "openrouter",
        "gen_ai.request.model": "openai/gpt-4o-mini",
        "gen_ai.request.stream": False,
        "gen_ai.response.model": reply.model,
        "gen_ai.response.id": reply.id,
        "gen_ai.response.finish_reasons": ("stop",),
        "gen_ai.usage.input_tokens": reply.usage.prompt_tokens,
        "gen_ai.usage.output_tokens": 5,
        "http.request.method": "POST",
        "http.response.status_code": 200,
        "url.full": f"{sim_base}/chat/completions",
        "server.address": "127.0.0.1",
        "server.port": int(sim_base.split(":")[2].split("/")[0]),
        "llmgateway.upstream.attempt": 1,
        "llmgateway.upstream.provider": reply.provider,
    }
    # OpenRouter is told the attempt's span is its parent.
    assert sent == [traceparent_of(client)]


async def test_the_callers_trace_context_is_continued(otel: Captured) -> None:
    metadata = (*auth(), ("traceparent", INCOMING), ("tracestate", "vendor=opaque"))
    async with start_gateway(telemetry=otel.telemetry) as gw:
        await gw.stub.Complete(pb.CompleteRequest(messages=[user("Hi")]), metadata=metadata)
        await gw.wait_finished(1)
        upstream = [r.headers for r in gw.sim.state.requests if r.path.endswith("/completions")]

    server = otel.server_span("Complete")
    assert f"{server.context.trace_id:032x}" == INCOMING_TRACE
    assert server.parent is not None
    assert server.parent.is_remote
    assert f"{server.parent.span_id:016x}" == INCOMING_SPAN
    [client] = otel.children(server)
    assert client.context.trace_id == server.context.trace_id
    assert [h["traceparent"] for h in upstream] == [traceparent_of(client)]
    assert [h["tracestate"] for h in upstream] == ["vendor=opaque"]


async def test_a_stream_is_one_server_span_and_sends_the_request_id_first(
    otel: Captured,
) -> None:
    metadata = (*auth(), ("x-request-id", "req-stream-1"))
    async with start_gateway(telemetry=otel.telemetry) as gw:
        call = gw.stub.StreamComplete(
            pb.StreamCompleteRequest(messages=[user("Hi [[sim:tokens=3]]")]), metadata=metadata
        )
        # In the headers, before any message is read.
        assert dict(await call.initial_metadata() or ())["x-request-id"] == "req-stream-1"
        messages = [m async for m in call]
        await gw.wait_finished(1)

    start, end = messages[0].start, messages[-1].end
    server = otel.server_span("StreamComplete")
    server_attrs = attrs(server)
    assert server_attrs["rpc.method"] == "StreamComplete"
    assert server_attrs["rpc.grpc.status_code"] == 0
    assert server_attrs["gen_ai.response.id"] == start.id
    assert server_attrs["gen_ai.response.finish_reasons"] == ("stop",)
    assert server_attrs["gen_ai.usage.output_tokens"] == end.usage.completion_tokens == 3
    [client] = otel.children(server)
    client_attrs = attrs(client)
    assert client_attrs["gen_ai.request.stream"] is True
    assert client_attrs["gen_ai.response.id"] == start.id
    assert client_attrs["gen_ai.response.finish_reasons"] == ("stop",)
    assert client_attrs["gen_ai.usage.output_tokens"] == 3


async def test_a_retried_call_has_a_failed_attempt_with_a_retry_event(otel: Captured) -> None:
    text = "Hi [[sim:error=502]] [[sim:fail-times=1]]"
    async with start_gateway(telemetry=otel.telemetry) as gw:
        await gw.stub.Complete(pb.CompleteRequest(messages=[user(text)]), metadata=auth())
        await gw.wait_finished(1)
        sent = traceparents(gw.sim)

    server = otel.server_span("Complete")
    assert attrs(server)["llmgateway.upstream.retries"] == 1
    assert server.status.status_code is StatusCode.UNSET
    first, second = sorted(otel.children(server), key=lambda s: s.start_time or 0)
    assert attrs(first)["llmgateway.upstream.attempt"] == 1
    assert attrs(first)["http.response.status_code"] == 502
    assert attrs(first)["error.type"] == "UPSTREAM_UNAVAILABLE"
    assert first.status.status_code is StatusCode.ERROR
    [event] = first.events
    assert event.name == "retry"
    event_attrs = dict(event.attributes or {})
    assert event_attrs["llmgateway.upstream.attempt"] == 1
    assert event_attrs["error.type"] == "UPSTREAM_UNAVAILABLE"
    delay = event_attrs["llmgateway.retry.delay_s"]
    assert isinstance(delay, float)
    assert 0 <= delay <= 0.05
    assert attrs(second)["llmgateway.upstream.attempt"] == 2
    assert attrs(second)["http.response.status_code"] == 200
    assert second.status.status_code is StatusCode.UNSET
    assert not second.events
    # Each attempt went out with its own span as the parent.
    assert sent == [traceparent_of(first), traceparent_of(second)]


async def test_a_failed_call_is_an_error_span_with_its_reason(otel: Captured) -> None:
    async with start_gateway(telemetry=otel.telemetry, openrouter={"max_retries": 0}) as gw:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await gw.stub.Complete(
                pb.CompleteRequest(messages=[user("Hi [[sim:error=503]]")]), metadata=auth()
            )
        assert caught.value.code() is grpc.StatusCode.UNAVAILABLE
        await gw.wait_finished(1)

    server = otel.server_span("Complete")
    assert server.status.status_code is StatusCode.ERROR
    assert server.status.description == "UPSTREAM_UNAVAILABLE"
    assert attrs(server)["error.type"] == "UPSTREAM_UNAVAILABLE"
    assert attrs(server)["rpc.grpc.status_code"] == grpc.StatusCode.UNAVAILABLE.value[0]
    [client] = otel.children(server)
    assert client.status.status_code is StatusCode.ERROR
    assert attrs(client)["http.response.status_code"] == 503
    assert not client.events


async def test_a_callers_mistake_has_a_reason_but_is_not_a_server_error(
    otel: Captured,
) -> None:
    """gRPC conventions: only server-side codes (UNAVAILABLE, INTERNAL, …) mark a span failed."""
    async with start_gateway(telemetry=otel.telemetry) as gw:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await gw.stub.Complete(
                pb.CompleteRequest(messages=[user("Hi")]), metadata=auth("not-a-key")
            )
        assert caught.value.code() is grpc.StatusCode.UNAUTHENTICATED
        await gw.wait_finished(1)

    server = otel.server_span("Complete")
    assert server.status.status_code is StatusCode.UNSET
    assert attrs(server)["error.type"] == "API_KEY_INVALID"
    assert attrs(server)["rpc.grpc.status_code"] == grpc.StatusCode.UNAUTHENTICATED.value[0]
    assert "llmgateway.caller.id" not in attrs(server)
    assert otel.client_spans() == []


async def test_rpcs_without_an_upstream_call_have_no_gen_ai_attributes(otel: Captured) -> None:
    async with start_gateway(telemetry=otel.telemetry) as gw:
        await gw.stub.ListModels(pb.ListModelsRequest(), metadata=auth())
        await gw.wait_finished(1)

    server = otel.server_span("ListModels")
    assert not [key for key in attrs(server) if key.startswith("gen_ai.")]
    assert attrs(server)["llmgateway.caller.id"] == "alpha"
    assert otel.client_spans() == []


async def test_without_telemetry_only_a_callers_valid_trace_context_goes_upstream() -> None:
    texts = ["Hi", "Hi again", "Hi once more"]
    sent_metadata = [
        auth(),
        (*auth(), ("traceparent", INCOMING), ("tracestate", "vendor=opaque")),
        (*auth(), ("traceparent", "00-not-a-trace-01")),
    ]
    async with start_gateway(telemetry=Telemetry()) as gw:
        assert gw.server.client._observer is None
        for text, metadata in zip(texts, sent_metadata, strict=True):
            await gw.stub.Complete(pb.CompleteRequest(messages=[user(text)]), metadata=metadata)
        upstream = [r.headers for r in gw.sim.state.requests if r.path.endswith("/completions")]

    assert [(h.get("traceparent"), h.get("tracestate")) for h in upstream] == [
        (None, None),
        (INCOMING, "vendor=opaque"),
        (None, None),
    ]


async def test_a_stream_the_caller_leaves_ends_its_spans_as_cancelled(otel: Captured) -> None:
    async with start_gateway(telemetry=otel.telemetry) as gw:
        call = gw.stub.StreamComplete(
            pb.StreamCompleteRequest(messages=[user("Hi [[sim:hang]]")]), metadata=auth()
        )
        await gw.sim.state.wait_for_request(lambda r: r.path.endswith("/chat/completions"))
        call.cancel()
        [(_, code)] = await gw.wait_finished(1)
        assert code is grpc.StatusCode.CANCELLED

    server = otel.server_span("StreamComplete")
    assert attrs(server)["rpc.grpc.status_code"] == grpc.StatusCode.CANCELLED.value[0]
    assert attrs(server)["error.type"] == "CANCELLED"
    assert server.status.status_code is StatusCode.UNSET
    [client] = otel.children(server)
    assert attrs(client)["error.type"] == "cancelled"
    assert client.status.status_code is StatusCode.UNSET
    assert sums(otel, "llmgateway.upstream.attempts") == {
        key(**{"llmgateway.outcome": "cancelled"}): 1
    }
    assert sums(otel, "llmgateway.streams.active") == {(): 0}


async def test_a_callers_unsampled_trace_is_passed_on_without_recording_spans(
    otel: Captured,
) -> None:
    """The default sampler follows the caller's decision: flags 00 record nothing here, yet
    OpenRouter still learns the trace (unsampled), and metrics still count the call."""
    metadata = (*auth(), ("traceparent", f"00-{INCOMING_TRACE}-{INCOMING_SPAN}-00"))
    async with start_gateway(telemetry=otel.telemetry) as gw:
        await gw.stub.Complete(pb.CompleteRequest(messages=[user("Hi")]), metadata=metadata)
        await gw.wait_finished(1)
        [sent] = traceparents(gw.sim)

    assert otel.spans() == ()
    assert sent is not None
    version, trace_id, span_id, flags = sent.split("-")
    assert (version, trace_id, flags) == ("00", INCOMING_TRACE, "00")
    assert span_id != INCOMING_SPAN  # the gateway's (unrecorded) server span
    assert sum(sums(otel, "llmgateway.requests").values()) == 1
