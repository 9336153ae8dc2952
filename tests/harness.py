"""A real gateway for tests: the simulator on loopback and a grpc.aio server on port 0."""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from google.protobuf.message import Message as ProtoMessage
from google.rpc import error_details_pb2, status_pb2
from llmgateway.v1 import completion_service_pb2 as pb
from llmgateway.v1 import completion_service_pb2_grpc as pb_grpc
from pydantic import AnyHttpUrl, SecretStr

from service.config import GatewaySettings, OpenRouterSettings
from service.domain.accounting import CallRecord
from service.domain.callers import Caller, CallerLimits, hash_key
from service.server import GatewayServer
from service.simulator import RunningSimulator, SimulatorConfig, run_simulator
from service.telemetry import Telemetry

# Recognisable so tests can prove it never leaks into statuses, logs or records.
UPSTREAM_KEY = "sk-or-v1-TESTSECRET-0123456789abcdef"
ALPHA_KEY = "key-alpha-CALLERSECRET"
BETA_KEY = "key-beta-CALLERSECRET"


def default_callers() -> list[Caller]:
    return [
        Caller("alpha", hash_key(ALPHA_KEY), ("*",)),
        Caller("beta", hash_key(BETA_KEY), ("openai/*",), CallerLimits()),
    ]


def auth(key: str = ALPHA_KEY) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {key}"),)


def user(text: str) -> pb.Message:
    return pb.Message(role=pb.ROLE_USER, content=text)


@dataclass
class Harness:
    sim: RunningSimulator
    server: GatewayServer
    channel: grpc.aio.Channel
    stub: pb_grpc.CompletionServiceAsyncStub
    finished: list[tuple[CallRecord, grpc.StatusCode]] = field(default_factory=list)
    finish_signal: asyncio.Event = field(default_factory=asyncio.Event)
    """Set whenever a call is appended to ``finished``."""

    async def rows_written(self, rpcs: int) -> None:
        """Return once the server has finished ``rpcs`` RPCs and their rows are written.

        A failed RPC's status reaches the client before its row is queued (``context.abort``
        sends it; the servicer accounts the call as it unwinds), so a client that has seen the
        error cannot just flush the ledger: it waits for the finish hook first."""
        await self.wait_finished(rpcs)
        await self.server.ledger.flush()

    async def wait_finished(
        self,
        count: int = 1,
        *,
        timeout: float = 5.0,  # noqa: ASYNC109 - one line per test, like the simulator's waits
    ) -> list[tuple[CallRecord, grpc.StatusCode]]:
        """``finished`` once it holds ``count`` calls: a call is booked as its handler unwinds,
        which can be just after the client saw it end."""
        async with asyncio.timeout(timeout):
            while len(self.finished) < count:
                self.finish_signal.clear()
                await self.finish_signal.wait()
        return self.finished


@asynccontextmanager
async def start_gateway(
    *,
    sim_config: SimulatorConfig | None = None,
    callers: Sequence[Caller] | None = None,
    gateway: dict[str, Any] | None = None,
    openrouter: dict[str, Any] | None = None,
    telemetry: Telemetry | None = None,
) -> AsyncIterator[Harness]:
    async with (
        run_simulator(sim_config or SimulatorConfig(keepalive_comments=2)) as sim,
        serve_gateway(
            sim, callers=callers, gateway=gateway, openrouter=openrouter, telemetry=telemetry
        ) as harness,
    ):
        yield harness


@asynccontextmanager
async def serve_gateway(
    sim: RunningSimulator,
    *,
    callers: Sequence[Caller] | None = None,
    gateway: dict[str, Any] | None = None,
    openrouter: dict[str, Any] | None = None,
    telemetry: Telemetry | None = None,
) -> AsyncIterator[Harness]:
    """A gateway in front of a simulator the caller runs, so a test can stop the upstream.

    ``telemetry`` (e.g. with in-memory exporters) is the test's to read and shut down."""
    with tempfile.TemporaryDirectory(prefix="llmgw-test-") as ledger_dir:
        async with serve_gateway_with_ledger(
            sim,
            Path(ledger_dir) / "usage.sqlite3",
            callers=callers,
            gateway=gateway,
            openrouter=openrouter,
            telemetry=telemetry,
        ) as harness:
            yield harness


@asynccontextmanager
async def serve_gateway_with_ledger(
    sim: RunningSimulator,
    ledger_path: Path,
    *,
    callers: Sequence[Caller] | None = None,
    gateway: dict[str, Any] | None = None,
    openrouter: dict[str, Any] | None = None,
    telemetry: Telemetry | None = None,
) -> AsyncIterator[Harness]:
    """``serve_gateway`` with its SQLite ledger at ``ledger_path``, for a test that reads the
    rows back or shares the file between two gateways."""
    # Overrides replace the defaults (a plain **-merge would raise on a repeated name).
    or_settings = OpenRouterSettings(
        **{
            "api_key": SecretStr(UPSTREAM_KEY),
            "base_url": AnyHttpUrl(sim.base_url),
            "default_model": "openai/gpt-4o-mini",
            "timeout_ms": 10_000,
            "max_retries": 2,
            "backoff_base_ms": 10,
            "backoff_max_ms": 50,
            "retry_after_cap_ms": 2_000,
            **(openrouter or {}),
        }
    )
    # Each gateway its own ledger: tests must not share rows, nor touch `make run`'s file.
    gw_settings = GatewaySettings(
        **{"listen": "127.0.0.1:0", "ledger_path": ledger_path, **(gateway or {})}
    )
    finished: list[tuple[CallRecord, grpc.StatusCode]] = []
    finish_signal = asyncio.Event()

    def on_finish(record: CallRecord, code: grpc.StatusCode) -> None:
        finished.append((record, code))
        finish_signal.set()

    server = GatewayServer(
        gw_settings,
        or_settings,
        list(callers if callers is not None else default_callers()),
        on_finish=on_finish,
        telemetry=telemetry if telemetry is not None else Telemetry(),
    )
    await server.start()
    try:
        async with grpc.aio.insecure_channel(server.address) as channel:
            yield Harness(
                sim=sim,
                server=server,
                channel=channel,
                stub=pb_grpc.CompletionServiceStub(channel),
                finished=finished,
                finish_signal=finish_signal,
            )
    finally:
        await server.stop(0)


@dataclass
class RichError:
    code: grpc.StatusCode
    message: str
    info: error_details_pb2.ErrorInfo
    details: list[ProtoMessage]

    def detail(self, kind: type[Any]) -> Any:
        for item in self.details:
            if isinstance(item, kind):
                return item
        raise AssertionError(f"no {kind.__name__} in {self.details}")


_DETAIL_TYPES = (
    error_details_pb2.ErrorInfo,
    error_details_pb2.RetryInfo,
    error_details_pb2.BadRequest,
    error_details_pb2.QuotaFailure,
)


def rich_error(error: grpc.aio.AioRpcError) -> RichError:
    """Reads the google.rpc.Status a client finds in the trailers, as grpcio-status does."""
    raw = dict(error.trailing_metadata() or ()).get("grpc-status-details-bin")
    assert isinstance(raw, bytes), "no rich status in the trailers"
    status = status_pb2.Status.FromString(raw)
    assert status.code == error.code().value[0]
    assert status.message == error.details()
    details: list[ProtoMessage] = []
    for packed in status.details:
        for kind in _DETAIL_TYPES:
            if packed.Is(kind.DESCRIPTOR):
                message = kind()
                packed.Unpack(message)
                details.append(message)
    infos = [d for d in details if isinstance(d, error_details_pb2.ErrorInfo)]
    assert len(infos) == 1, "every error carries exactly one ErrorInfo"
    return RichError(error.code(), error.details() or "", infos[0], details)


def delta_runs(kinds: Iterable[str | None]) -> list[str | None]:
    """A stream's message kinds with each run of deltas shown once: the gateway may merge
    tokens that arrived together into one delta, so how many deltas carry an answer varies."""
    shape: list[str | None] = []
    for kind in kinds:
        if not (kind == "delta" and shape and shape[-1] == "delta"):
            shape.append(kind)
    return shape
