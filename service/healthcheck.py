"""``python -m service.healthcheck HOST:PORT``: exit 0 when grpc.health.v1 says SERVING.

For container HEALTHCHECKs, which cannot speak gRPC themselves.
"""

from __future__ import annotations

import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def main(argv: list[str]) -> int:
    address = argv[1] if len(argv) > 1 else "127.0.0.1:50051"
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
