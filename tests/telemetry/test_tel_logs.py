"""The "rpc finished" log line, and proof that no key, prompt or answer reaches logs or spans."""

from __future__ import annotations

import logging

import grpc
import orjson
import pytest
from llmgateway.v1 import completion_service_pb2 as pb

from service.domain.policy import OPEN_POLICY
from service.logs import JsonFormatter
from tests.harness import ALPHA_KEY, UPSTREAM_KEY, auth, start_gateway, user
from tests.telemetry.support import Captured, attrs, point_attrs

PROMPT = "zebra-prompt-7c1f tells about Kilimanjaro"
WRONG_KEY = "key-wrong-CALLERSECRET-5150"


def lines(caplog: pytest.LogCaptureFixture) -> list[dict[str, object]]:
    """Every captured record, as the JSON line production would write."""
    formatter = JsonFormatter()
    return [orjson.loads(formatter.format(record)) for record in caplog.records]


def finished_lines(caplog: pytest.LogCaptureFixture) -> list[dict[str, object]]:
    return [line for line in lines(caplog) if line["msg"] == "rpc finished"]


async def test_each_rpc_logs_one_line_tied_to_its_trace(
    otel: Captured, caplog: pytest.LogCaptureFixture
) -> None:
    metadata = (*auth(), ("x-request-id", "req-log-1"))
    with caplog.at_level(logging.INFO, logger="service.rpc"):
        async with start_gateway(telemetry=otel.telemetry) as gw:
            text = "Hi [[sim:tokens=4]] [[sim:error=502]] [[sim:fail-times=1]]"
            reply = await gw.stub.Complete(
                pb.CompleteRequest(messages=[user(text)]), metadata=metadata
            )
            await gw.wait_finished(1)

    [line] = finished_lines(caplog)
    span = otel.server_span("Complete")
    latency = line.pop("latency_ms")
    ttft = line.pop("ttft_ms")
    assert isinstance(latency, float)
    assert isinstance(ttft, float)
    assert 0 < ttft <= latency
    assert line.pop("ts")
    call_id = line.pop("call_id")
    assert isinstance(call_id, str)
    assert len(call_id) == 32
    assert line == {
        "level": "INFO",
        "logger": "service.rpc",
        "msg": "rpc finished",
        "request_id": "req-log-1",
        "trace_id": f"{span.context.trace_id:032x}",
        "span_id": f"{span.context.span_id:016x}",
        "caller_id": "alpha",
        "rpc": "Complete",
        "model": "openai/gpt-4o-mini",
        "served_model": reply.model,
        "provider": reply.provider,
        "policy_id": OPEN_POLICY.id,
        "status": "OK",
        "retries": 1,
        "prompt_tokens": reply.usage.prompt_tokens,
        "completion_tokens": 4,
        "cost_usd": pytest.approx(reply.usage.cost_usd),
    }


async def test_without_telemetry_the_line_still_carries_the_callers_trace_id(
    caplog: pytest.LogCaptureFixture,
) -> None:
    trace_id = "0af7651916cd43dd8448eb211c80319c"
    metadata = (*auth("nope"), ("traceparent", f"00-{trace_id}-b7ad6b7169203331-01"))
    with caplog.at_level(logging.INFO, logger="service.rpc"):
        async with start_gateway() as gw:
            with pytest.raises(grpc.aio.AioRpcError):
                await gw.stub.ListModels(pb.ListModelsRequest(), metadata=metadata)
            await gw.wait_finished(1)

    [line] = finished_lines(caplog)
    assert line["trace_id"] == trace_id
    assert "span_id" not in line
    assert (line["rpc"], line["status"], line["reason"]) == (
        "ListModels",
        "UNAUTHENTICATED",
        "API_KEY_INVALID",
    )
    assert line["caller_id"] == ""


async def test_no_key_prompt_or_answer_reaches_a_log_line_span_or_metric(
    otel: Captured, caplog: pytest.LogCaptureFixture
) -> None:
    answers: list[str] = []
    with caplog.at_level(logging.DEBUG):
        async with start_gateway(telemetry=otel.telemetry) as gw:
            reply = await gw.stub.Complete(
                pb.CompleteRequest(messages=[user(f"{PROMPT} [[sim:tokens=40]]")]),
                metadata=auth(),
            )
            answers.append(reply.content)
            stream = gw.stub.StreamComplete(
                pb.StreamCompleteRequest(messages=[user(f"{PROMPT} [[sim:tokens=40]]")]),
                metadata=auth(),
            )
            answers.append("".join([m.delta.content async for m in stream]))
            structured = await gw.stub.CompleteStructured(
                pb.CompleteStructuredRequest(schema_name="chat_reply_v1", messages=[user(PROMPT)]),
                metadata=auth(),
            )
            answers.append(structured.json)
            retried = await gw.stub.Complete(
                pb.CompleteRequest(
                    messages=[user(f"{PROMPT} [[sim:error=502]] [[sim:fail-times=1]]")]
                ),
                metadata=auth(),
            )
            answers.append(retried.content)
            for text, key in ((f"{PROMPT} [[sim:error=400]]", ALPHA_KEY), (PROMPT, WRONG_KEY)):
                with pytest.raises(grpc.aio.AioRpcError):
                    await gw.stub.Complete(
                        pb.CompleteRequest(messages=[user(text)]), metadata=auth(key)
                    )
            await gw.wait_finished(6)

    secrets = [UPSTREAM_KEY, ALPHA_KEY, WRONG_KEY, PROMPT, *answers]
    assert all(len(answer) >= 40 for answer in answers), answers  # recognisable, not words

    written = lines(caplog)
    assert len([line for line in written if line["msg"] == "rpc finished"]) == 6
    # The gateway's lines, and the libraries' it uses (not the simulator's own).
    text = "\n".join(
        orjson.dumps(line).decode()
        for line in written
        if not str(line["logger"]).startswith(("service.simulator", "aiohttp.access"))
    )
    spans = otel.spans()
    assert len(otel.server_spans()) == 6
    assert len(otel.client_spans()) == 6
    span_text = "\n".join(
        repr((s.name, attrs(s), [(e.name, e.attributes) for e in s.events], s.status.description))
        for s in spans
    )
    metric_text = "\n".join(
        repr(point_attrs(point)) for name in otel.metrics() for point in otel.points(name)
    )
    for secret in secrets:
        assert secret not in text
        assert secret not in span_text
        assert secret not in metric_text
