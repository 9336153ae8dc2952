"""``python -m service``: serve the gateway until SIGTERM or SIGINT, then drain and exit 0.

With no ``OPENROUTER_API_KEY`` the built-in OpenRouter simulator is started in-process and a
demo caller (key ``demo-key``) is accepted, so the gateway works offline.
"""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import Callable
from contextlib import AsyncExitStack
from pathlib import Path

from pydantic import AnyHttpUrl, SecretStr, ValidationError

from service import gc_tuning
from service.callers_file import ConfigError
from service.config import GatewaySettings, OpenRouterSettings, TelemetrySettings
from service.domain.callers import Caller, hash_key
from service.logs import configure_logging
from service.server import GatewayServer, load_caller_list
from service.telemetry import Telemetry, build_telemetry

DEMO_KEY = "demo-key"
_SIMULATOR_KEY = "sk-or-v1-simulator"


def _grpcurl() -> str:
    """The grpcurl beside this interpreter (the project's venv ships one), else from PATH."""
    beside = Path(sys.executable).parent / "grpcurl"
    if beside.exists():
        try:
            return str(beside.relative_to(Path.cwd()))
        except ValueError:
            return str(beside)
    return "grpcurl"


def _banner(server: GatewayServer, simulator: bool) -> str:
    address = server.address
    lines = [f"LLM Gateway serving on {address}"]
    if server.telemetry.prometheus_port is not None:
        host = address.rsplit(":", 1)[0]
        lines.append(f"  metrics: http://{host}:{server.telemetry.prometheus_port}/metrics")
    if simulator:
        lines += [
            "  upstream: built-in OpenRouter simulator (no OPENROUTER_API_KEY set)",
            f"  demo caller key: {DEMO_KEY}",
            "  try:",
            f"    {_grpcurl()} -plaintext -H 'authorization: Bearer {DEMO_KEY}' "
            f'-d \'{{"messages":[{{"role":"ROLE_USER","content":"Hello"}}]}}\' '
            f"{address} llmgateway.v1.CompletionService/Complete",
        ]
    return "\n".join(lines)


async def serve(
    settings: GatewaySettings,
    openrouter: OpenRouterSettings,
    telemetry_settings: TelemetrySettings | None = None,
) -> int:
    simulator = settings.simulator if settings.simulator is not None else not openrouter.api_key
    if not simulator and openrouter.api_key is None:
        raise ConfigError("OPENROUTER_API_KEY is not set (and GATEWAY_SIMULATOR is false)")
    telemetry = (
        Telemetry()
        if telemetry_settings is None
        else build_telemetry(
            telemetry_settings,
            prometheus_host=settings.listen.rsplit(":", 1)[0],
            prometheus_port=settings.prometheus_port,
        )
    )
    async with AsyncExitStack() as stack:
        # Pushed first, so run last: the spans and metrics of the drained calls are exported.
        stack.push_async_callback(asyncio.to_thread, telemetry.shutdown)
        if simulator:
            # Imported here: production never loads the simulator's code.
            from service.simulator import SimulatorConfig, run_simulator

            sim = await stack.enter_async_context(run_simulator(SimulatorConfig()))
            openrouter = openrouter.model_copy(
                update={"base_url": AnyHttpUrl(sim.base_url), "api_key": SecretStr(_SIMULATOR_KEY)}
            )
            callers = (
                load_caller_list(settings)
                if settings.callers_file
                else [Caller("demo", hash_key(DEMO_KEY), ("*",))]
            )
        else:
            callers = load_caller_list(settings)
        server = GatewayServer(settings, openrouter, callers, telemetry=telemetry)
        await server.start()
        gc_tuning.freeze_startup_objects()
        print(_banner(server, simulator), file=sys.stderr, flush=True)
        stopping = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stopping.set)
        await stopping.wait()
        print("draining…", file=sys.stderr, flush=True)
        await server.stop()
    return 0


def _loop_factory(choice: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    if choice == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        if choice == "uvloop":
            raise ConfigError("GATEWAY_EVENT_LOOP=uvloop but uvloop is not installed") from None
        return None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


def main() -> int:
    try:
        settings = GatewaySettings()
        openrouter = OpenRouterSettings()
        telemetry = TelemetrySettings()
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        print(f"configuration error: {where}: {first['msg']}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level)
    gc_tuning.tune(settings.gc_threshold)
    try:
        with asyncio.Runner(loop_factory=_loop_factory(settings.event_loop)) as runner:
            return runner.run(serve(settings, openrouter, telemetry))
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
