"""Metadata no grpc client would send (CR/LF, control characters, garbage) never breaks a call.

Sent over a bare HTTP/2 client, since grpc's own clients refuse such values. A trace header
that does not parse is ignored (the call proceeds as a new trace); nothing of it reaches
OpenRouter's request headers.
"""

from __future__ import annotations

import grpc
import pytest
from llmgateway.v1 import completion_service_pb2 as pb

from tests.api.raw_http2 import RawReply, frame, raw_call
from tests.api.support import chat_requests
from tests.harness import ALPHA_KEY, Harness, start_gateway, user

COMPLETE = "/llmgateway.v1.CompletionService/Complete"
TRACE = "0af7651916cd43dd8448eb211c80319c"
VALID = f"00-{TRACE}-b7ad6b7169203331-01"


async def complete_raw(gw: Harness, metadata: tuple[tuple[str, str], ...]) -> RawReply:
    request = pb.CompleteRequest(messages=[user("Hi [[sim:tokens=2]]")])
    return await raw_call(
        gw.server.address,
        COMPLETE,
        frame(request.SerializeToString()),
        (("authorization", f"Bearer {ALPHA_KEY}"), *metadata),
    )


@pytest.mark.parametrize(
    "traceparent",
    [f"{VALID}\r\nx-injected: 1", f"{VALID}\n", f"{VALID}\x00", "garbage", "00-" + "z" * 60],
    ids=["crlf-header", "lf", "nul", "garbage", "not-hex"],
)
async def test_a_malformed_traceparent_is_ignored(traceparent: str) -> None:
    async with start_gateway() as gw:
        reply = await complete_raw(gw, (("traceparent", traceparent),))
        assert reply.grpc_status == grpc.StatusCode.OK.value[0]
        [message] = reply.messages
        assert pb.CompleteResponse.FromString(message).content
        [upstream] = chat_requests(gw.sim)
        assert "traceparent" not in upstream.headers
        assert "x-injected" not in upstream.headers


@pytest.mark.parametrize(
    "tracestate", ["vendor=a\r\nx-injected: 1", "vendor=\x01", "v=\x7f"], ids=["crlf", "ctl", "del"]
)
async def test_a_malformed_tracestate_is_dropped_and_the_trace_kept(tracestate: str) -> None:
    async with start_gateway() as gw:
        reply = await complete_raw(gw, (("traceparent", VALID), ("tracestate", tracestate)))
        assert reply.grpc_status == grpc.StatusCode.OK.value[0]
        [upstream] = chat_requests(gw.sim)
        assert upstream.headers["traceparent"] == VALID
        assert "tracestate" not in upstream.headers
        assert "x-injected" not in upstream.headers
