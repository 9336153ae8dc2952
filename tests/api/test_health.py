"""``grpc.health.v1.Health`` through the real server: List answers, and no call a stranger can
make (health, reflection, the contract with a bad key, garbage bytes, an unknown method)
writes an ERROR line to the log.

grpcio-health-checking's asyncio servicer lacks List: each call ended UNIMPLEMENTED with an
ERROR line and a traceback ("Unexpected [NotImplementedError] raised by servicer method"),
one per call, for anyone who can reach the port.
"""

from __future__ import annotations

import logging
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2
from llmgateway.v1 import completion_service_pb2 as pb

from service.api.health import HealthListRequest, HealthListResponse
from service.api.servicer import SERVICE_NAME
from tests.api.support import health_check, health_watch, reflected_services
from tests.harness import auth, rich_error, start_gateway, user

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def health_list(channel: grpc.aio.Channel) -> grpc.aio.UnaryUnaryMultiCallable[Any, Any]:
    return channel.unary_unary(
        "/grpc.health.v1.Health/List",
        request_serializer=HealthListRequest.SerializeToString,
        response_deserializer=HealthListResponse.FromString,
    )


def raw_unary(
    channel: grpc.aio.Channel, method: str
) -> grpc.aio.UnaryUnaryMultiCallable[bytes, bytes]:
    return channel.unary_unary(method)


def statuses(reply: Any) -> dict[str, int]:
    return {name: response.status for name, response in reply.statuses.items()}


async def test_list_gives_every_registered_service_and_follows_the_drain() -> None:
    async with start_gateway() as gw:
        listed = await health_list(gw.channel)(HealthListRequest(), timeout=5)
        assert statuses(listed) == {"": SERVING, SERVICE_NAME: SERVING}
        await gw.server.health.enter_graceful_shutdown()
        listed = await health_list(gw.channel)(HealthListRequest(), timeout=5)
        assert statuses(listed) == {"": NOT_SERVING, SERVICE_NAME: NOT_SERVING}


async def test_check_of_an_unknown_service_is_not_found() -> None:
    async with start_gateway() as gw:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await health_check(gw.channel)(health_pb2.HealthCheckRequest(service="nope"))
        assert refused.value.code() is grpc.StatusCode.NOT_FOUND
        reply = await health_check(gw.channel)(health_pb2.HealthCheckRequest(service=SERVICE_NAME))
        assert reply.status == SERVING


async def _code(call: object) -> grpc.StatusCode:
    try:
        await call  # type: ignore[misc]
    except grpc.aio.AioRpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


async def test_no_call_a_stranger_can_make_logs_an_error(caplog: pytest.LogCaptureFixture) -> None:
    garbage = b"\xff\xff\xff\xff"
    with caplog.at_level(logging.WARNING):
        async with start_gateway() as gw:
            channel = gw.channel
            codes: dict[str, grpc.StatusCode] = {}
            for round_ in range(5):
                codes["list"] = await _code(health_list(channel)(HealthListRequest()))
                codes["check"] = await _code(health_check(channel)(health_pb2.HealthCheckRequest()))
                codes["check unknown"] = await _code(
                    health_check(channel)(health_pb2.HealthCheckRequest(service=f"x{round_}"))
                )
                codes["check garbage"] = await _code(
                    raw_unary(channel, "/grpc.health.v1.Health/Check")(garbage)
                )
                codes["list garbage"] = await _code(
                    raw_unary(channel, "/grpc.health.v1.Health/List")(garbage)
                )
                codes["no key"] = await _code(
                    gw.stub.Complete(pb.CompleteRequest(messages=[user("Hi")]))
                )
                codes["bad key"] = await _code(
                    gw.stub.Complete(pb.CompleteRequest(messages=[user("Hi")]), metadata=auth("x"))
                )
                codes["garbage bytes, bad key"] = await _code(
                    raw_unary(channel, f"/{SERVICE_NAME}/Complete")(garbage, metadata=auth("x"))
                )
                codes["unknown method"] = await _code(
                    raw_unary(channel, f"/{SERVICE_NAME}/Nope")(b"")
                )
                watch = health_watch(channel)(health_pb2.HealthCheckRequest(service="nope"))
                first = await watch.read()
                assert (
                    getattr(first, "status", None) == health_pb2.HealthCheckResponse.SERVICE_UNKNOWN
                )
                watch.cancel()
                assert await reflected_services(channel)
    assert codes == {
        "list": grpc.StatusCode.OK,
        "check": grpc.StatusCode.OK,
        "check unknown": grpc.StatusCode.NOT_FOUND,
        "check garbage": grpc.StatusCode.INVALID_ARGUMENT,
        "list garbage": grpc.StatusCode.INVALID_ARGUMENT,
        "no key": grpc.StatusCode.UNAUTHENTICATED,
        "bad key": grpc.StatusCode.UNAUTHENTICATED,
        "garbage bytes, bad key": grpc.StatusCode.UNAUTHENTICATED,
        "unknown method": grpc.StatusCode.UNIMPLEMENTED,
    }
    loud = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert loud == [], [f"{r.name}: {r.getMessage()}" for r in loud]


async def first_answer(
    channel: grpc.aio.Channel, rpc: str, request: health_pb2.HealthCheckRequest
) -> object:
    if rpc == "Check":
        return await health_check(channel)(request, timeout=10)
    return await health_watch(channel)(request, timeout=10).read()


@pytest.mark.parametrize("rpc", ["Check", "Watch"])
async def test_a_large_health_request_is_refused_not_held(rpc: str) -> None:
    """Health is open to anyone, and a Watch holds its request while it runs: 40 open Watch
    calls with ~8 MB service names held 1.3 GB of the gateway's memory. A request over 1 KiB
    (a long name, or unknown fields) now ends at once with INVALID_ARGUMENT."""
    huge = health_pb2.HealthCheckRequest(service="x" * 4 * 2**20)
    async with start_gateway() as gw:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await first_answer(gw.channel, rpc, huge)
        ok = await health_check(gw.channel)(health_pb2.HealthCheckRequest(service=""))
    assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    error = rich_error(refused.value)
    assert error.info.reason == "INVALID_ARGUMENT"
    assert str(error.detail(error_details_pb2.BadRequest).field_violations[0].field) == "service"
    assert ok.status == SERVING  # a request of the usual size is answered as before
