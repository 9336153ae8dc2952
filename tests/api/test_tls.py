"""TLS and mutual TLS: the gateway serves TLS, and a client certificate can name the caller."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from llmgateway.v1 import completion_service_pb2 as pb
from llmgateway.v1 import completion_service_pb2_grpc as pb_grpc

from tests.harness import auth, rich_error, start_gateway, user


@dataclass(frozen=True)
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    alpha_cert: Path
    alpha_key: Path
    stranger_cert: Path
    stranger_key: Path


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def _issue(directory: Path, name: str, common_name: str, *, server: bool) -> None:
    _openssl(
        "req", "-new", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key",
        "-out", f"{name}.csr", "-subj", f"/CN={common_name}", cwd=directory,
    )  # fmt: skip
    extensions = directory / f"{name}.ext"
    extensions.write_text(
        "subjectAltName=DNS:localhost,IP:127.0.0.1\n" if server else "extendedKeyUsage=clientAuth\n"
    )
    _openssl(
        "x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
        "-CAcreateserial", "-out", f"{name}.crt", "-days", "2", "-extfile", extensions.name,
        cwd=directory,
    )  # fmt: skip


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    directory = tmp_path_factory.mktemp("pki")
    _openssl(
        "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt",
        "-days", "2", "-subj", "/CN=llmgw-test-ca", cwd=directory,
    )  # fmt: skip
    _issue(directory, "server", "localhost", server=True)
    _issue(directory, "alpha", "alpha", server=False)
    _issue(directory, "stranger", "nobody-we-know", server=False)
    return Pki(
        ca=directory / "ca.crt",
        server_cert=directory / "server.crt",
        server_key=directory / "server.key",
        alpha_cert=directory / "alpha.crt",
        alpha_key=directory / "alpha.key",
        stranger_cert=directory / "stranger.crt",
        stranger_key=directory / "stranger.key",
    )


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
