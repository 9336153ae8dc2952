"""``grpc.health.v1.Health`` as the gateway serves it: Check, Watch and List.

grpcio-health-checking's asyncio servicer implements Check and Watch only. Its List is the
generated base's, which raises ``NotImplementedError``: every List call (health is open to
anyone, no key needed) ended UNIMPLEMENTED with an ERROR line and a traceback in the log, so a
stranger could flood the log. This servicer answers List with the status of every registered
service; Check refuses an unknown service by setting NOT_FOUND (an abort would raise, and its
traceback hold the request until the collector runs); and Watch keeps no state keyed by the
service name a caller sends (the library's kept a condition per name watched).

The methods are registered through ``service.api.decoding`` like the library's were, so
undecodable bytes get INVALID_ARGUMENT with ErrorInfo.
"""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
from grpc_health.v1 import health_pb2

from service.api.status import status_code_for, to_rpc_status
from service.errors import InvalidRequestError

Status = int
"""A ``HealthCheckResponse.ServingStatus`` value."""
SERVING: Status = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING: Status = health_pb2.HealthCheckResponse.NOT_SERVING
SERVICE_UNKNOWN: Status = health_pb2.HealthCheckResponse.SERVICE_UNKNOWN

# The type stubs (types-grpcio) predate List and its messages; the runtime module has them.
HealthListRequest: Any = vars(health_pb2)["HealthListRequest"]
HealthListResponse: Any = vars(health_pb2)["HealthListResponse"]

MAX_REQUEST_BYTES = 1024
"""A health request is a service name: anything larger is refused before it is kept. A Watch
holds its request for as long as it runs, and anyone may call it: 40 open Watch calls with
~8 MB names held 1.3 GB."""
_DETAILS_KEY = "grpc-status-details-bin"

MAX_LISTED_SERVICES = 100
"""The spec lets List answer RESOURCE_EXHAUSTED when too many services exist; the gateway
registers two, so this only guards against a change that registers names without bound."""

Context = grpc.aio.ServicerContext[Any, Any]


class GatewayHealth:
    """Health of the gateway (``""``) and of each service it registers (``set``)."""

    def __init__(self) -> None:
        self._statuses: dict[str, Status] = {"": SERVING}
        self._changed = asyncio.Event()
        """Set (and replaced) at each change; a watcher never holds a lock that ``set`` needs,
        so a watcher that does not read cannot hold up the drain's NOT_SERVING."""
        self._shutting_down = False

    # --- what the server sets --------------------------------------------------------------

    async def set(self, service: str, status: Status) -> None:
        """Set a service's status (ignored once the graceful shutdown has begun)."""
        if not self._shutting_down:
            await self._set({service: status})

    async def enter_graceful_shutdown(self) -> None:
        """Every service NOT_SERVING, for good: later ``set`` calls are ignored."""
        if not self._shutting_down:
            self._shutting_down = True
            await self._set(dict.fromkeys(self._statuses, NOT_SERVING))

    async def _set(self, changes: dict[str, Status]) -> None:
        self._statuses.update(changes)
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    # --- the RPCs ---------------------------------------------------------------------------

    async def Check(  # noqa: N802 (the proto's method name)
        self, request: health_pb2.HealthCheckRequest, context: Context
    ) -> health_pb2.HealthCheckResponse | None:
        if _refused(request, context):
            return None
        status = self._statuses.get(request.service)
        if status is None:
            context.set_code(grpc.StatusCode.NOT_FOUND)
            context.set_details("unknown service")
            return None
        return health_pb2.HealthCheckResponse(status=status)

    async def List(self, request: Any, context: Context) -> Any:  # noqa: N802
        del request  # a HealthListRequest has no fields
        if len(self._statuses) > MAX_LISTED_SERVICES:
            context.set_code(grpc.StatusCode.RESOURCE_EXHAUSTED)
            context.set_details(f"more than {MAX_LISTED_SERVICES} services")
            return None
        return HealthListResponse(
            statuses={
                name: health_pb2.HealthCheckResponse(status=status)
                for name, status in self._statuses.items()
            }
        )

    async def Watch(  # noqa: N802
        self, request: health_pb2.HealthCheckRequest, context: Context
    ) -> None:
        """The status now, then each change, until the caller leaves; an unknown service is
        SERVICE_UNKNOWN (it may be registered later), as the health protocol asks."""
        if _refused(request, context):
            return
        service = request.service
        last: Status | None = None
        while True:
            changed = self._changed
            status = self._statuses.get(service, SERVICE_UNKNOWN)
            if status != last:
                await context.write(health_pb2.HealthCheckResponse(status=status))
                last = status
            await changed.wait()


def _refused(request: health_pb2.HealthCheckRequest, context: Context) -> bool:
    """Refuse (INVALID_ARGUMENT with ErrorInfo) a request larger than ``MAX_REQUEST_BYTES``
    (``ByteSize`` counts unknown fields too), so the call ends and its bytes are freed."""
    if request.ByteSize() <= MAX_REQUEST_BYTES:
        return False
    error = InvalidRequestError.for_field(
        "service", f"a health request is at most {MAX_REQUEST_BYTES} bytes"
    )
    status = to_rpc_status(error)
    context.set_code(status_code_for(error))
    context.set_details(status.message)
    context.set_trailing_metadata(((_DETAILS_KEY, status.SerializeToString()),))
    return True


__all__ = ["GatewayHealth", "HealthListRequest", "HealthListResponse"]
