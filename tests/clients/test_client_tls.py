"""The client's TLS transport against a gateway serving TLS: the key travels as call
credentials over a verified connection, sync and asyncio alike, and a channel that does not
trust the gateway's certificate gets no answer."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import pytest
from llmgateway.client import connect, connect_async
from llmgateway.v1 import completion_service_pb2 as pb
from llmgateway.v1.completion_service_pb2_grpc import CompletionServiceStub

from tests.harness import ALPHA_KEY, start_gateway
from tests.pki import Pki, make_pki


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def _hello() -> pb.CompleteRequest:
    return pb.CompleteRequest(messages=[pb.Message(role=pb.ROLE_USER, content="Hello over TLS")])


def _complete_sync(target: str, ca: bytes) -> str:
    with connect(target, ALPHA_KEY, root_certificates=ca) as channel:
        return CompletionServiceStub(channel).Complete(_hello(), timeout=10).id


async def test_tls_channels_carry_the_key_to_a_tls_gateway(pki: Pki) -> None:
    settings = {"tls_cert_file": pki.server_cert, "tls_key_file": pki.server_key}
    async with start_gateway(gateway=settings) as gw:
        # The server certificate names localhost: the target must too.
        target = f"localhost:{gw.server.address.rsplit(':', 1)[1]}"
        ca = pki.ca.read_bytes()
        async with connect_async(target, ALPHA_KEY, root_certificates=ca) as channel:
            reply = await CompletionServiceStub(channel).Complete(_hello(), timeout=10)
        sync_id = await asyncio.to_thread(_complete_sync, target, ca)
        records = [record for record, _ in gw.finished if record.rpc == "Complete"]
    assert reply.id.startswith("gen-")
    assert sync_id.startswith("gen-")
    assert [record.caller_id for record in records] == ["alpha", "alpha"]


async def test_a_channel_that_does_not_trust_the_gateway_gets_nothing(
    pki: Pki, tmp_path: Path
) -> None:
    other = make_pki(tmp_path)  # another CA, which never signed the gateway's certificate
    settings = {"tls_cert_file": pki.server_cert, "tls_key_file": pki.server_key}
    async with start_gateway(gateway=settings) as gw:
        target = f"localhost:{gw.server.address.rsplit(':', 1)[1]}"
        async with connect_async(
            target, ALPHA_KEY, root_certificates=other.ca.read_bytes()
        ) as channel:
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await CompletionServiceStub(channel).Complete(_hello(), timeout=3)
        assert not [record for record, _ in gw.finished if record.rpc == "Complete"]
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
