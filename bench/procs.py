"""Child processes of a benchmark run: spawned in their own process group, always reaped.

Every child gets a new session (so its group id is its pid) and its output goes to a log file
in the run's temporary folder; ``Processes.close()`` signals each group with SIGTERM, then
SIGKILL after a grace period, so no child outlives the run.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Self

import grpc
import orjson
from grpc_health.v1 import health_pb2, health_pb2_grpc

from bench.load import read_rss_kb

ROOT = Path(__file__).resolve().parent.parent
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


class BenchError(Exception):
    """The benchmark cannot go on; the message says which process failed and why."""


def python(*args: str) -> list[str]:
    """A command line running this interpreter (the project's virtual environment)."""
    return [sys.executable, *args]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of ``pid``, all threads (0 if it is gone)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
            # The command name (field 2) may hold spaces; fields after it are fixed.
            fields = stat.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS


def machine_busy_seconds() -> float:
    """CPU seconds all cores spent busy since boot (/proc/stat), every process included."""
    try:
        with open("/proc/stat", encoding="ascii") as stat:
            fields = stat.readline().split()[1:]
    except OSError:
        return 0.0
    # user nice system idle iowait irq softirq steal: all but idle and iowait are busy.
    ticks = [int(value) for value in fields[:8]]
    return (sum(ticks) - ticks[3] - ticks[4]) / _CLOCK_TICKS


def own_cpu_seconds(children: Sequence[Child]) -> float:
    """CPU seconds of this process and of the children still running."""
    times = os.times()
    return times.user + times.system + sum(child.cpu_s() for child in children)


def process_tree(pid: int) -> list[int]:
    """``pid`` and its descendants (a supervisor's workers), from /proc."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="ascii") as stat:
                parent = int(stat.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        parents.setdefault(parent, []).append(int(entry))
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        todo.extend(parents.get(current, ()))
    return tree


def tree_cpu_seconds(pid: int) -> float:
    """CPU seconds of ``pid`` and of its living descendants."""
    return sum(cpu_seconds(member) for member in process_tree(pid))


def thread_cpu_seconds(pid: int) -> dict[str, tuple[str, float]]:
    """CPU time of each thread of ``pid``: thread id -> (thread name, seconds)."""
    threads: dict[str, tuple[str, float]] = {}
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return threads
    for tid in tids:
        with contextlib.suppress(OSError):
            name = Path(f"/proc/{pid}/task/{tid}/comm").read_text(encoding="utf-8").strip()
            fields = (
                Path(f"/proc/{pid}/task/{tid}/stat").read_text(encoding="ascii").rsplit(")", 1)[1]
            ).split()
            threads[tid] = (name, (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS)
    return threads


def loaded_libraries(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/maps").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""


@dataclass
class Child:
    """One running child process and its log file."""

    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path
    started_at: float

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def rss_mb(self) -> float:
        """RSS of the child, or of its largest descendant (a supervisor's worker)."""
        return max(read_rss_kb(pid) for pid in process_tree(self.pid)) / 1024

    def cpu_s(self) -> float:
        """CPU seconds of the child and its descendants (a supervisor's workers)."""
        return tree_cpu_seconds(self.pid)

    def log_tail(self, lines: int = 15) -> str:
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def fail(self, what: str) -> BenchError:
        return BenchError(f"{self.name}: {what}\n--- {self.log_path} (tail) ---\n{self.log_tail()}")

    def wait_for_line(self, prefix: str, timeout_s: float) -> str:
        """The first line of the log starting with ``prefix``; polls the file, bounded."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError):
                for line in self.log_path.read_text(encoding="utf-8").splitlines():
                    if line.startswith(prefix):
                        return line
            if not self.alive():
                raise self.fail(f"exited with {self.popen.returncode} before printing {prefix!r}")
            time.sleep(0.01)
        raise self.fail(f"printed no {prefix!r} line within {timeout_s:.0f} s")

    def wait_for_line_containing(self, text: str, timeout_s: float) -> str:
        """The first line of the log holding ``text``; polls the file, bounded."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError):
                for line in self.log_path.read_text(encoding="utf-8").splitlines():
                    if text in line:
                        return line
            if not self.alive():
                raise self.fail(f"exited with {self.popen.returncode} before printing {text!r}")
            time.sleep(0.01)
        raise self.fail(f"printed no {text!r} within {timeout_s:.0f} s")

    def terminate(self) -> None:
        """SIGTERM to the child's group (it drains and exits); see ``stop``."""
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, signal.SIGTERM)

    def stop(self, grace_s: float = 5.0) -> None:
        """SIGTERM to the child's group, SIGKILL after ``grace_s``; always reaps the child."""
        if self.popen.poll() is None:
            self.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.popen.wait(timeout=grace_s)
        # The group may still hold grandchildren even when the leader is gone.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(timeout=5.0)


@dataclass
class Processes:
    """Spawns children and stops all of them, newest first, when the block exits."""

    workdir: Path
    children: list[Child] = field(default_factory=list)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self, grace_s: float = 5.0) -> None:
        """Signal every child at once, then reap each (SIGKILL once the grace is over)."""
        for child in self.children:
            child.terminate()
        deadline = time.monotonic() + grace_s
        while self.children:
            self.children.pop().stop(max(0.0, deadline - time.monotonic()))

    def spawn(
        self,
        name: str,
        argv: Sequence[str],
        env: Mapping[str, str] | None = None,
        *,
        stdin: int | None = subprocess.DEVNULL,
        stdout_pipe: bool = False,
    ) -> Child:
        log_path = self.workdir / f"{name}.log"
        with log_path.open("ab") as log:
            started = time.perf_counter()
            popen = subprocess.Popen(
                list(argv),
                cwd=ROOT,
                env={**os.environ, **(env or {})},
                stdin=stdin,
                stdout=subprocess.PIPE if stdout_pipe else log,
                stderr=log,
                start_new_session=True,
            )
        child = Child(name, popen, log_path, started)
        self.children.append(child)
        return child

    def stop(self, child: Child, grace_s: float = 5.0) -> None:
        child.stop(grace_s)
        if child in self.children:
            self.children.remove(child)


def wait_serving(child: Child, address: str, timeout_s: float) -> float:
    """Seconds from spawning ``child`` until grpc.health.v1 Check says SERVING.

    Polls the TCP port first (cheap), then the health service, every 5 ms; bounded.
    """
    host, port = address.rsplit(":", 1)
    deadline = child.started_at + timeout_s
    request = health_pb2.HealthCheckRequest()
    while time.perf_counter() < deadline:
        if not child.alive():
            raise child.fail(f"exited with {child.popen.returncode} while starting")
        try:
            with socket.create_connection((host, int(port)), timeout=0.2):
                pass
        except OSError:
            time.sleep(0.005)
            continue
        with grpc.insecure_channel(address) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            try:
                reply = stub.Check(request, timeout=0.5)  # type: ignore[attr-defined]
            except grpc.RpcError:
                reply = None
        if reply is not None and reply.status == health_pb2.HealthCheckResponse.SERVING:
            return time.perf_counter() - child.started_at
        time.sleep(0.005)
    raise child.fail(f"not SERVING on {address} within {timeout_s:.0f} s")


class LoadGenerator:
    """The load process: one JSON job per line in, one JSON result per line out."""

    def __init__(self, processes: Processes, loop: str) -> None:
        self._child = processes.spawn(
            "load",
            python("-m", "bench.load", "--loop", loop),
            stdin=subprocess.PIPE,
            stdout_pipe=True,
        )
        self._stdin: IO[bytes] = _stream(self._child.popen.stdin)
        self._stdout: IO[bytes] = _stream(self._child.popen.stdout)
        self._buffer = b""

    @property
    def child(self) -> Child:
        return self._child

    def run(self, job: Mapping[str, Any], timeout_s: float) -> dict[str, Any]:
        self._stdin.write(orjson.dumps(job) + b"\n")
        self._stdin.flush()
        deadline = time.monotonic() + timeout_s
        fd = self._stdout.fileno()
        while b"\n" not in self._buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise self._child.fail(f"no result within {timeout_s:.0f} s")
            ready, _, _ = select.select([fd], [], [], min(remaining, 1.0))
            if ready:
                data = os.read(fd, 1 << 20)
                if not data:
                    raise self._child.fail("exited while running a job")
                self._buffer += data
        line, self._buffer = self._buffer.split(b"\n", 1)
        result: dict[str, Any] = orjson.loads(line)
        if "failed" in result:
            raise self._child.fail(f"job failed: {result['failed']}")
        return result


def _stream(stream: IO[bytes] | None) -> IO[bytes]:
    if stream is None:
        raise BenchError("a pipe to the load generator was not opened")
    return stream
