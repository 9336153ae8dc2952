"""``GATEWAY_WORKERS=N``: N server processes on one port, under one supervisor.

CPython runs one thread of Python at a time, so one process serves on one core at most. With
``GATEWAY_WORKERS`` above 1, ``python -m service`` becomes a supervisor: it checks the
settings and the address once, then starts N workers, each a ``python -m service`` of its own
that binds the same port with ``SO_REUSEPORT`` (the kernel spreads new connections across
them). ``auto`` starts one per CPU this process may use (its affinity, and the cgroup's CPU
quota in a container). The default is 1: the in-process quota store (the default) cannot be
shared, and one process per pod is what a Kubernetes HorizontalPodAutoscaler expects.

What the supervisor does, and why:

* **Quotas stay exact.** Several workers need a shared quota store (``GATEWAY_REDIS_URL``):
  each worker's in-process store would count alone and multiply every limit by N, so the
  supervisor refuses to start without one. The SQLite ledger takes several writers (WAL,
  busy waits, retries; ``tests/ledger/test_ledger_writers.py``); only worker 0 reconciles
  cancelled streams, so ``/generation`` is not asked N times.
* **Health reflects the whole.** Every worker answers grpc.health.v1 for itself on the shared
  port, so a health check reaches some worker, and all of them drain together.
* **One drain for all.** SIGTERM and SIGINT are forwarded to every worker, which runs the
  usual drain (NOT_SERVING, ``GATEWAY_DRAIN_DELAY_S``, refusal, grace); a second signal is
  forwarded too (it cuts the delay short). The supervisor exits once every worker has, 0 if
  all drained cleanly. SIGHUP (reload) is forwarded to every worker.
* **A worker that dies ends the whole.** The others drain and the supervisor exits 1, so the
  orchestrator sees the failure and restarts the pod, rather than a supervisor hiding a crash
  loop behind a port that still answers with fewer workers than asked for.
* **No orphans.** Workers run in sessions of their own (a signal to the supervisor's group
  is forwarded once, not delivered twice) and hold one end of a socket pair whose other end
  is the supervisor's: if the supervisor dies, even by SIGKILL, each worker reads EOF and
  drains as on SIGTERM.
* **Metrics.** Worker i serves Prometheus metrics on ``GATEWAY_PROMETHEUS_PORT + i``.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import signal
import socket
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from service.config import ConfigError, GatewaySettings, split_host_port

ROLE_VARIABLE = "LLMGW_WORKER"
"""Set by the supervisor for each worker: ``index/count/fd`` (internal, not a setting)."""
_READY = b"ready\n"
_STARTUP_TIMEOUT_S = 120.0


@dataclass(frozen=True, slots=True)
class WorkerRole:
    """This process is worker ``index`` of ``count``; ``fd`` is its end of the socket pair
    shared with the supervisor."""

    index: int
    count: int
    fd: int

    def encode(self) -> str:
        return f"{self.index}/{self.count}/{self.fd}"


def worker_role(environ: Mapping[str, str] = os.environ) -> WorkerRole | None:
    """The role the supervisor gave this process, or None when it is not a worker."""
    raw = environ.get(ROLE_VARIABLE)
    if not raw:
        return None
    try:
        index, count, fd = (int(part) for part in raw.split("/"))
    except ValueError:
        raise ConfigError(f"{ROLE_VARIABLE}={raw[:32]!r} is not index/count/fd") from None
    return WorkerRole(index, count, fd)


# --- how many ----------------------------------------------------------------------------


def usable_cpus(cgroup: Path = Path("/sys/fs/cgroup/cpu.max")) -> int:
    """CPUs this process may use: its affinity, capped by a cgroup v2 CPU quota."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    count = cpus or 1
    with contextlib.suppress(OSError, ValueError):
        quota, period = cgroup.read_text(encoding="ascii").split()[:2]
        if quota != "max":
            count = min(count, max(1, math.ceil(int(quota) / int(period))))
    return count


def resolve_workers(value: int | str) -> int:
    return usable_cpus() if value == "auto" else int(value)


def check_settings(settings: GatewaySettings, count: int) -> None:
    """What several workers need, each failure one line naming the variable."""
    if settings.redis_url is None:
        raise ConfigError(
            f"GATEWAY_WORKERS={count} needs a shared quota store (GATEWAY_REDIS_URL): the "
            f"in-process store counts in each worker alone, which would multiply every "
            f"limit by {count}"
        )
    if settings.simulator:
        raise ConfigError("GATEWAY_WORKERS above 1 is not for demo mode (GATEWAY_SIMULATOR)")
    if settings.listen.startswith(("unix:", "unix-abstract:")):
        raise ConfigError("GATEWAY_WORKERS above 1 needs a TCP GATEWAY_LISTEN (host:port)")
    if settings.prometheus_port:
        _, port = split_host_port(settings.listen)
        last = settings.prometheus_port + count - 1
        if last > 65535 or settings.prometheus_port <= port <= last:
            raise ConfigError(
                f"GATEWAY_PROMETHEUS_PORT: workers use ports {settings.prometheus_port}-{last} "
                "for metrics, which must be free ports other than GATEWAY_LISTEN's"
            )


# --- the supervisor ----------------------------------------------------------------------


def _placeholder(listen: str) -> tuple[socket.socket, str]:
    """A bound, never listening, ``SO_REUSEPORT`` socket on the address (so port 0 becomes a
    port every worker can bind), and that address with its port."""
    host, port = split_host_port(listen)
    bind_host = host or "0.0.0.0"  # noqa: S104 - the address the operator asked for
    family = socket.AF_INET6 if ":" in bind_host else socket.AF_INET
    holder = socket.socket(family, socket.SOCK_STREAM)
    try:
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        holder.bind((bind_host, port))
    except OSError as exc:
        holder.close()
        raise ConfigError(f"cannot listen on {listen}: {exc.strerror}") from None
    bound = holder.getsockname()[1]
    shown = f"[{host}]" if ":" in host else host
    return holder, f"{shown}:{bound}"


@dataclass
class _Worker:
    index: int
    process: asyncio.subprocess.Process
    channel: socket.socket
    ready: bool = False


class Supervisor:
    """Starts the workers, forwards signals, and ends when they have (see the module)."""

    def __init__(
        self,
        settings: GatewaySettings,
        count: int,
        *,
        banner: Callable[[str], str],
        check_address: Callable[[str], None],
    ) -> None:
        self._settings = settings
        self._count = count
        self._banner = banner
        self._check_address = check_address
        self._workers: list[_Worker] = []
        self._stopping = False
        self._failed: str | None = None
        self._exited = asyncio.Event()

    async def run(self) -> int:
        # One clear line when the address is taken, before any worker starts; then a
        # placeholder keeps the port (a chosen one, for port 0) ours for the workers.
        self._check_address(self._settings.listen)
        holder, address = _placeholder(self._settings.listen)
        loop = asyncio.get_running_loop()
        try:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, self._on_stop, sig)
            loop.add_signal_handler(signal.SIGHUP, self._forward, signal.SIGHUP)
            for index in range(self._count):
                self._workers.append(await self._spawn(index, address))
            watchers = [
                asyncio.create_task(self._watch(worker), name=f"worker-{worker.index}")
                for worker in self._workers
            ]
            try:
                await self._until_ready()
                if not self._stopping and self._failed is None:
                    print(self._banner(address), file=sys.stderr, flush=True)
                await asyncio.gather(*watchers)
            finally:
                for task in watchers:
                    task.cancel()
        finally:
            for worker in self._workers:
                if worker.process.returncode is None:
                    with contextlib.suppress(ProcessLookupError):
                        worker.process.kill()
                    await worker.process.wait()
                worker.channel.close()
            holder.close()
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(sig)
        return self._exit_code()

    def _exit_code(self) -> int:
        codes = [worker.process.returncode for worker in self._workers]
        if self._failed is not None:
            # A worker that could not start says why itself (exit 2, one line): pass it on.
            return 2 if 2 in codes and not all(w.ready for w in self._workers) else 1
        stopped = (0, -signal.SIGTERM, -signal.SIGINT)
        return 0 if all(code in stopped for code in codes) else 1

    async def _spawn(self, index: int, address: str) -> _Worker:
        ours, theirs = socket.socketpair()
        ours.setblocking(False)
        role = WorkerRole(index, self._count, theirs.fileno())
        env = {**os.environ, ROLE_VARIABLE: role.encode(), "GATEWAY_LISTEN": address}
        try:
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "service",
                env=env,
                pass_fds=(theirs.fileno(),),
                # Its own session: a signal to our group reaches it once, forwarded by us.
                start_new_session=True,
            )
        finally:
            theirs.close()
        return _Worker(index, process, ours)

    async def _until_ready(self) -> None:
        loop = asyncio.get_running_loop()

        async def ready(worker: _Worker) -> None:
            with contextlib.suppress(OSError):
                if await loop.sock_recv(worker.channel, len(_READY)) == _READY:
                    worker.ready = True
                    return
            # The pair closed without a word: the worker is exiting (``_watch`` says why).
            await worker.process.wait()

        async def all_ready() -> None:
            await asyncio.gather(*(ready(worker) for worker in self._workers))

        waits: list[asyncio.Task[object]] = [
            asyncio.create_task(all_ready()),
            asyncio.create_task(self._exited.wait()),
        ]
        try:
            await asyncio.wait(
                waits, timeout=_STARTUP_TIMEOUT_S, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            for task in waits:
                task.cancel()
        await asyncio.sleep(0)  # let the watchers report an exit first
        started = all(worker.ready for worker in self._workers)
        if not started and self._failed is None and not self._stopping:
            self._fail(f"not every worker was serving within {_STARTUP_TIMEOUT_S:g} s")

    async def _watch(self, worker: _Worker) -> None:
        code = await worker.process.wait()
        self._exited.set()
        if not self._stopping and self._failed is None:
            phase = "while starting" if not worker.ready else "unexpectedly"
            self._fail(f"worker {worker.index} (pid {worker.process.pid}) exited {phase} ({code})")

    def _fail(self, why: str) -> None:
        self._failed = why
        print(f"{why}; stopping the gateway", file=sys.stderr, flush=True)
        self._stopping = True
        self._forward(signal.SIGTERM)

    def _on_stop(self, sig: signal.Signals) -> None:
        self._stopping = True
        self._forward(sig)

    def _forward(self, sig: signal.Signals) -> None:
        for worker in self._workers:
            if worker.process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    worker.process.send_signal(sig)


# --- the worker's side -------------------------------------------------------------------


def announce_ready(role: WorkerRole) -> None:
    """Tell the supervisor this worker serves."""
    with contextlib.suppress(OSError):
        os.write(role.fd, _READY)


def on_supervisor_lost(role: WorkerRole, callback: Callable[[], None]) -> Callable[[], None]:
    """Call ``callback`` once, on the loop, when the supervisor's end of the pair closes (it
    exited, or was killed). Returns a function that stops watching."""
    loop = asyncio.get_running_loop()

    def readable() -> None:
        try:
            data = os.read(role.fd, 64)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            loop.remove_reader(role.fd)
            callback()

    os.set_blocking(role.fd, False)
    loop.add_reader(role.fd, readable)

    def stop() -> None:
        loop.remove_reader(role.fd)

    return stop


__all__ = [
    "ROLE_VARIABLE",
    "Supervisor",
    "WorkerRole",
    "announce_ready",
    "check_settings",
    "on_supervisor_lost",
    "resolve_workers",
    "usable_cpus",
    "worker_role",
]
