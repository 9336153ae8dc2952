"""``python -m service``: serve the gateway until SIGTERM or SIGINT, then drain and exit 0.

Only with ``GATEWAY_SIMULATOR=true`` (which ``make run`` sets when no key is configured) is the
built-in OpenRouter simulator started in-process and a demo caller (key ``demo-key``) accepted;
that demo mode listens on 127.0.0.1 unless ``GATEWAY_LISTEN`` says otherwise. Without a key
and without that setting the gateway refuses to start.

``GATEWAY_WORKERS`` above 1 makes this process a supervisor of that many server processes
on one port (``service.workers``).

SIGHUP reloads the callers file, the schemas folder and the key file (``service.reload``).
SIGTERM: health turns NOT_SERVING, calls are still served for ``GATEWAY_DRAIN_DELAY_S``, then
refused while the calls in flight get ``GATEWAY_SHUTDOWN_GRACE_S``. SIGINT (Ctrl-C) skips the
delay, and a second signal cuts a running delay short.
"""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import Callable
from contextlib import AsyncExitStack
from pathlib import Path

from pydantic import AnyHttpUrl, SecretStr, ValidationError
from pydantic_settings import BaseSettings, SettingsError

from service import gc_tuning, workers
from service.config import (
    DEMO_LISTEN,
    ConfigError,
    GatewaySettings,
    OpenRouterSettings,
    TelemetrySettings,
    describe_invalid,
)
from service.domain.callers import Caller, hash_key
from service.logs import configure_logging
from service.server import GatewayServer, check_listen_address, load_caller_list
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
            "  upstream: built-in OpenRouter simulator (GATEWAY_SIMULATOR=true)",
            f"  demo caller key: {DEMO_KEY}",
            "  try:",
            f"    {_grpcurl()} -plaintext -H 'authorization: Bearer {DEMO_KEY}' "
            f'-d \'{{"messages":[{{"role":"ROLE_USER","content":"Hello"}}]}}\' '
            f"{address} llmgateway.v1.CompletionService/Complete",
        ]
    return "\n".join(lines)


def demo_settings(settings: GatewaySettings) -> GatewaySettings:
    """In simulator mode, 127.0.0.1 unless GATEWAY_LISTEN was given: demo mode accepts a
    published key, so it is not offered to the network unasked."""
    if settings.simulator and "listen" not in settings.model_fields_set:
        return settings.model_copy(update={"listen": DEMO_LISTEN})
    return settings


def _workers_banner(count: int, settings: GatewaySettings) -> Callable[[str], str]:
    def banner(address: str) -> str:
        host = address.rsplit(":", 1)[0]
        if host in ("0.0.0.0", "[::]", ""):  # noqa: S104 - naming the wildcard, not binding it
            host = "127.0.0.1"
        lines = [f"LLM Gateway serving on {host}:{address.rsplit(':', 1)[1]} ({count} workers)"]
        if settings.prometheus_port is not None:
            first, last = settings.prometheus_port, settings.prometheus_port + count - 1
            lines.append(f"  metrics: http://{host}:{first}-{last}/metrics (a port per worker)")
        return "\n".join(lines)

    return banner


async def serve(
    settings: GatewaySettings,
    openrouter: OpenRouterSettings,
    telemetry_settings: TelemetrySettings | None = None,
    role: workers.WorkerRole | None = None,
) -> int:
    """Serve until stopped; ``role``: as one of the workers of a supervisor."""
    simulator = settings.simulator
    if role is not None and settings.prometheus_port:
        settings = settings.model_copy(
            update={"prometheus_port": settings.prometheus_port + role.index}
        )
    if not simulator and openrouter.api_key is None and openrouter.api_key_file is None:
        raise ConfigError(
            "OPENROUTER_API_KEY is not set (nor OPENROUTER_API_KEY_FILE); "
            "set GATEWAY_SIMULATOR=true to serve against the built-in simulator instead"
        )
    settings = demo_settings(settings)
    telemetry = (
        Telemetry()
        if telemetry_settings is None
        else build_telemetry(
            telemetry_settings,
            prometheus_host=settings.listen_host,
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
                update={
                    "base_url": AnyHttpUrl(sim.base_url),
                    "api_key": SecretStr(_SIMULATOR_KEY),
                    "api_key_file": None,
                }
            )
            callers = (
                load_caller_list(settings)
                if settings.callers_file
                else [Caller("demo", hash_key(DEMO_KEY), ("*",))]
            )
        else:
            callers = load_caller_list(settings)
        server = GatewayServer(
            settings,
            openrouter,
            callers,
            telemetry=telemetry,
            reuse_port=role is not None,
            reconcile=role is None or role.index == 0,
        )
        await server.start()
        gc_tuning.freeze_startup_objects()

        def ready() -> None:
            if role is None:
                print(_banner(server, simulator), file=sys.stderr, flush=True)
            else:
                workers.announce_ready(role)

        await _until_stopped(server, role, ready)
    return 0


async def _until_stopped(
    server: GatewayServer, role: workers.WorkerRole | None, ready: Callable[[], None]
) -> None:
    """Serve until SIGTERM or SIGINT (for a worker, also until its supervisor is gone), then
    drain (see the module docstring). ``ready`` says the gateway serves — only once the
    signal handlers are in place: a SIGTERM that followed the word at once (a supervisor whose
    other worker died, a rollout) would otherwise kill the process without its drain."""
    stopping = asyncio.Event()
    skip_delay = False
    loop = asyncio.get_running_loop()

    def on_signal(sig: signal.Signals) -> None:
        nonlocal skip_delay
        if stopping.is_set():
            server.end_drain_delay()
            return
        skip_delay = sig is signal.SIGINT
        stopping.set()

    reloads: set[asyncio.Task[object]] = set()

    def on_hangup() -> None:
        # Held until done: the loop keeps only weak references to tasks.
        task: asyncio.Task[object] = loop.create_task(server.reload())
        reloads.add(task)
        task.add_done_callback(reloads.discard)

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig)
    loop.add_signal_handler(signal.SIGHUP, on_hangup)
    if role is not None:
        # An orphaned worker drains as on SIGTERM rather than serving on unsupervised.
        workers.on_supervisor_lost(role, lambda: on_signal(signal.SIGTERM))
    ready()
    await stopping.wait()
    loop.remove_signal_handler(signal.SIGHUP)
    delay = 0.0 if skip_delay else server.settings.drain_delay_s
    print(
        f"draining… (serving for {delay:g} s more, then refusing new calls)"
        if delay
        else "draining…",
        file=sys.stderr,
        flush=True,
    )
    await server.stop(delay_s=delay)


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
    settings_class: type[BaseSettings] = GatewaySettings
    try:
        settings = GatewaySettings()
        settings_class = OpenRouterSettings
        openrouter = OpenRouterSettings()
        settings_class = TelemetrySettings
        telemetry = TelemetrySettings()
    except ValidationError as exc:
        print(f"configuration error: {describe_invalid(settings_class, exc)}", file=sys.stderr)
        return 2
    except SettingsError as exc:
        # pydantic-settings could not even decode a variable (its message names it).
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level)
    try:
        role = workers.worker_role()
        count = 1 if role is not None else workers.resolve_workers(settings.workers)
        if count > 1:
            workers.check_settings(settings, count)
            supervisor = workers.Supervisor(
                settings,
                count,
                banner=_workers_banner(count, settings),
                check_address=check_listen_address,
            )
            return asyncio.run(supervisor.run())
        gc_tuning.tune(settings.gc_threshold)
        with asyncio.Runner(loop_factory=_loop_factory(settings.event_loop)) as runner:
            return runner.run(serve(settings, openrouter, telemetry, role))
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
