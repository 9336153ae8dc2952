"""``python -m service.healthcheck [HOST:PORT]``: exit 0 when grpc.health.v1 says SERVING.

For container HEALTHCHECKs, which cannot speak gRPC themselves. Without an address it asks the
gateway where ``GATEWAY_LISTEN`` says it listens (a wildcard host means this machine).
"""

from __future__ import annotations

import os
import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from service.config import DEFAULT_LISTEN, split_host_port


def local_address(listen: str) -> str:
    """Where to reach a server listening on ``listen`` from the same machine."""
    if listen.startswith(("unix:", "unix-abstract:")):
        return listen
    host, port = split_host_port(listen)
    if host in ("0.0.0.0", ""):  # noqa: S104 - naming the wildcard, not binding it
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def main(argv: list[str]) -> int:
    listen = os.environ.get("GATEWAY_LISTEN", DEFAULT_LISTEN)
    address = argv[1] if len(argv) > 1 else local_address(listen)
    with grpc.insecure_channel(address) as channel:
        try:
            stub = health_pb2_grpc.HealthStub(channel)
            # The typeshed stub declares no methods on HealthStub.
            reply = stub.Check(health_pb2.HealthCheckRequest(), timeout=2.0)  # type: ignore[attr-defined]
        except grpc.RpcError as exc:
            print(f"unhealthy: {exc.code().name}", file=sys.stderr)
            return 1
    serving = reply.status == health_pb2.HealthCheckResponse.SERVING
    print("serving" if serving else "not serving", file=sys.stderr)
    return 0 if serving else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
