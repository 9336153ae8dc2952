"""Server reflection v1 (asked first by buf curl and newer tools) next to v1alpha (grpcurl)."""

from __future__ import annotations

import json

import grpc
from google.protobuf import descriptor_pb2
from grpc_reflection.v1alpha import reflection_pb2

from tests.api.support import ROOT, run_process
from tests.harness import ALPHA_KEY, start_gateway

BUF = ROOT / "tools" / "node_modules" / ".bin" / "buf"
SERVICE = "llmgateway.v1.CompletionService"


async def _ask_v1(
    channel: grpc.aio.Channel, *requests: reflection_pb2.ServerReflectionRequest
) -> list[reflection_pb2.ServerReflectionResponse]:
    # A hand-written v1 client: the v1 and v1alpha messages are the same on the wire, only the
    # method path differs, and this one asks the v1 path.
    info = channel.stream_stream(
        "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
        request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
        response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
    )
    return [response async for response in info(iter(requests))]


async def test_a_v1_reflection_client_lists_and_describes_the_service() -> None:
    async with start_gateway() as gw:
        listed, described = await _ask_v1(
            gw.channel,
            reflection_pb2.ServerReflectionRequest(list_services=""),
            reflection_pb2.ServerReflectionRequest(file_containing_symbol=SERVICE),
        )
    names = {s.name for s in listed.list_services_response.service}
    assert {
        SERVICE,
        "grpc.reflection.v1.ServerReflection",
        "grpc.reflection.v1alpha.ServerReflection",
    } <= names
    files = [
        descriptor_pb2.FileDescriptorProto.FromString(raw)
        for raw in described.file_descriptor_response.file_descriptor_proto
    ]
    by_name = {f.name: f for f in files}
    contract = by_name["llmgateway/v1/completion_service.proto"]
    assert [s.name for s in contract.service] == ["CompletionService"]
    # The imports come along, so a client can decode the field behaviours too.
    assert "google/api/field_behavior.proto" in contract.dependency


async def test_reflection_describes_its_own_v1_service() -> None:
    async with start_gateway() as gw:
        (described,) = await _ask_v1(
            gw.channel,
            reflection_pb2.ServerReflectionRequest(
                file_containing_symbol="grpc.reflection.v1.ServerReflection"
            ),
        )
    (raw,) = described.file_descriptor_response.file_descriptor_proto
    file = descriptor_pb2.FileDescriptorProto.FromString(raw)
    assert file.package == "grpc.reflection.v1"
    (method,) = file.service[0].method
    assert method.input_type == ".grpc.reflection.v1.ServerReflectionRequest"


async def test_buf_curl_calls_the_gateway_through_reflection_v1_only() -> None:
    async with start_gateway() as gw:
        url = f"http://{gw.server.address}"
        common = [str(BUF), "curl", "--protocol", "grpc", "--http2-prior-knowledge"]
        # --reflect-protocol grpc-v1: no fallback to v1alpha.
        v1 = [*common, "--reflect-protocol", "grpc-v1"]
        listed = await run_process(*v1, "--list-services", url)
        called = await run_process(
            *v1,
            "-H",
            f"authorization: Bearer {ALPHA_KEY}",
            "-d",
            json.dumps({"messages": [{"role": "ROLE_USER", "content": "Hi [[sim:tokens=2]]"}]}),
            f"{url}/{SERVICE}/Complete",
        )
    assert listed.returncode == 0, listed.stderr
    assert SERVICE in listed.stdout.split()
    assert called.returncode == 0, called.stderr
    reply = json.loads(called.stdout)
    assert reply["finishReason"] == "FINISH_REASON_STOP"
    assert reply["usage"]["completionTokens"] == 2
