"""TLS and mutual TLS: the gateway serves TLS, and a client certificate can name the caller."""

from __future__ import annotations

import grpc
import pytest
from llmgateway.v1 import completion_service_pb2 as pb
from llmgateway.v1 import completion_service_pb2_grpc as pb_grpc

from tests.harness import auth, rich_error, start_gateway, user
from tests.pki import Pki, make_pki


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def _channel(address: str, pki: Pki, client: str | None) -> grpc.aio.Channel:
    key = cert = None
    if client == "alpha":
        key, cert = pki.alpha_key.read_bytes(), pki.alpha_cert.read_bytes()
    elif client == "stranger":
        key, cert = pki.stranger_key.read_bytes(), pki.stranger_cert.read_bytes()
    credentials = grpc.ssl_channel_credentials(
        root_certificates=pki.ca.read_bytes(), private_key=key, certificate_chain=cert
    )
    port = address.rsplit(":", 1)[1]
    return grpc.aio.secure_channel(
        f"localhost:{port}", credentials, options=[("grpc.ssl_target_name_override", "localhost")]
    )


async def test_tls_serves_bearer_callers(pki: Pki) -> None:
    settings = {"tls_cert_file": pki.server_cert, "tls_key_file": pki.server_key}
    async with start_gateway(gateway=settings) as gw, _channel(gw.server.address, pki, None) as ch:
        reply = await pb_grpc.CompletionServiceStub(ch).Complete(
            pb.CompleteRequest(messages=[user("Hello over TLS")]), metadata=auth()
        )
        assert reply.id.startswith("gen-")
        # The plaintext port is not served: a plaintext client cannot get through.
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await gw.stub.Complete(
                pb.CompleteRequest(messages=[user("Hello")]), metadata=auth(), timeout=2
            )
        assert caught.value.code() is grpc.StatusCode.UNAVAILABLE


async def test_mutual_tls_certificate_names_the_caller(pki: Pki) -> None:
    settings = {
        "tls_cert_file": pki.server_cert,
        "tls_key_file": pki.server_key,
        "tls_client_ca_file": pki.ca,
    }
    async with start_gateway(gateway=settings) as gw:
        async with _channel(gw.server.address, pki, "alpha") as channel:
            stub = pb_grpc.CompletionServiceStub(channel)
            # No bearer key: the certificate's common name, vouched for by the CA, is "alpha".
            reply = await stub.Complete(pb.CompleteRequest(messages=[user("Hello")]))
            assert reply.id.startswith("gen-")
            record, code = (await gw.wait_finished())[-1]
            assert (record.caller_id, code) == ("alpha", grpc.StatusCode.OK)

        async with _channel(gw.server.address, pki, "stranger") as channel:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await pb_grpc.CompletionServiceStub(channel).Complete(
                    pb.CompleteRequest(messages=[user("Hello")])
                )
            error = rich_error(caught.value)
            assert error.code is grpc.StatusCode.UNAUTHENTICATED
            assert error.info.reason == "API_KEY_MISSING"

        # Without a client certificate the handshake itself is refused.
        async with _channel(gw.server.address, pki, None) as channel:
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await pb_grpc.CompletionServiceStub(channel).Complete(
                    pb.CompleteRequest(messages=[user("Hello")]), metadata=auth(), timeout=2
                )
            assert refused.value.code() is grpc.StatusCode.UNAVAILABLE
