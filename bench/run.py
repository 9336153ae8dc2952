"""One benchmark run: start the simulator, the gateway and the floor, drive the scenarios.

The targets of every scenario (gateway, floor, direct, and an optional variant) are measured
in the same run, interleaved round by round (the order rotates), so drift on this shared
machine hits them alike.
"""

from __future__ import annotations

import hashlib
import shutil
import statistics
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import orjson

from bench import capacity
from bench.capacity import LIVE_STEPS, QUICK_LIVE_STEPS
from bench.hotspots import summarize_collapsed
from bench.live import LIVE_PACE_MS
from bench.otlp_sink import OtlpSink
from bench.procs import (
    BenchError,
    Child,
    LoadGenerator,
    Processes,
    free_port,
    loaded_libraries,
    machine_busy_seconds,
    own_cpu_seconds,
    process_tree,
    python,
    thread_cpu_seconds,
    wait_serving,
)
from bench.stats import summarize_ms

CALLER_KEY = "bench-caller-key-0123456789"
UPSTREAM_KEY = "sk-or-v1-bench-0123456789"
MODEL = "openrouter/sim-fast"
COMPLETION_TOKENS = 100
UNARY_CONCURRENCY = (1, 16, 64, 256)
STREAM_CONCURRENCY = (1, 16)
# "gateway" runs the full feature path with every RPC traced and exported; "shipped" the same
# gateway with the shipped defaults (no trace or metric exporter configured; callers file,
# quotas, SQLite ledger and the per-RPC log line on).
BASE_TARGETS = ("gateway", "shipped", "floor", "direct")
# Long answers at one token a second, so that every stream of the hold scenario is open at
# once (they are cancelled once the RSS is read; the deadline ends them in any case).
HOLD_PROMPT = "Keep talking. [[sim:pace=1000]] [[sim:tokens=300]]"
SCENARIOS = ("startup", "unary", "stream", "hold", "live")
_STARTUP_TIMEOUT_S = 30.0
_IDLE_SETTLE_S = 1.0


@dataclass(frozen=True, slots=True)
class Options:
    """How to run; the defaults are the full run of ``make bench``."""

    scenarios: tuple[str, ...] = SCENARIOS
    rounds: int = 4
    warmup_s: float = 0.5
    duration_s: float = 1.5
    startup_runs: int = 5
    hold_streams: int = 1000
    hold_sample_s: float = 1.0
    live_steps: tuple[int, ...] = LIVE_STEPS
    live_window_s: float = 6.0
    unary_concurrency: tuple[int, ...] = UNARY_CONCURRENCY
    stream_concurrency: tuple[int, ...] = STREAM_CONCURRENCY
    # The gateway ships on uvloop (GATEWAY_EVENT_LOOP=auto); the floor runs on the same loop
    # so the comparison is of the same stack. ``--floor-loop asyncio`` measures the other.
    gateway_loop: str = "uvloop"
    floor_loop: str = "uvloop"
    client_loop: str = "asyncio"
    # uvloop makes the simulator ~20 % cheaper per streamed token, which the live scenario
    # (tens of thousands of SSE writes a second on the same two cores) needs.
    simulator_loop: str = "uvloop"
    client: str = "aio"
    callers_per_channel: int = 16
    server_options: tuple[tuple[str, Any], ...] = ()
    client_options: tuple[tuple[str, Any], ...] = ()
    gateway_env: tuple[tuple[str, str], ...] = ()
    targets: tuple[str, ...] = BASE_TARGETS
    # A fourth target: a second gateway (or floor) with its own loop and environment,
    # measured interleaved with the others, for same-run A/B comparisons.
    variant_of: str = ""
    variant_loop: str = ""
    """Empty: the loop of the target the variant is a variant of."""
    variant_env: tuple[tuple[str, str], ...] = ()
    profile_s: float = 0.0
    profile_native: bool = False
    profile_target: str = "gateway"
    profile_kind: str = "unary"
    keep_logs: bool = False
    redis: bool = False
    """Run a Redis and give it to the gateways as their quota store (needed for workers)."""

    @staticmethod
    def quick() -> Options:
        return Options(
            rounds=1,
            warmup_s=0.4,
            duration_s=1.0,
            startup_runs=1,
            hold_sample_s=0.5,
            live_steps=QUICK_LIVE_STEPS,
            live_window_s=3.0,
        )


@dataclass(frozen=True, slots=True)
class Upstream:
    """Where the gateway's outbound traffic goes: the simulator and the telemetry sinks."""

    base_url: str
    otlp_endpoint: str
    metrics_port: int
    redis_url: str = ""
    """A Redis for the gateways' quotas (``--redis``); empty: the in-process store."""


@dataclass(frozen=True, slots=True)
class Server:
    """A target: its process and address (host:port for gRPC, the base URL for HTTP)."""

    child: Child
    address: str


@dataclass
class Stack:
    """The running processes of one run."""

    procs: Processes
    workdir: Path
    simulator: Child
    upstream: Upstream
    sink: OtlpSink
    servers: dict[str, Server]
    load: LoadGenerator
    startup: dict[str, list[dict[str, float]]] = field(default_factory=dict)

    @property
    def targets(self) -> tuple[str, ...]:
        return tuple(self.servers)

    @property
    def gateway(self) -> Child:
        return self.servers["gateway"].child


def _callers_file(workdir: Path) -> Path:
    digest = hashlib.sha256(CALLER_KEY.encode()).hexdigest()
    # Limits far above what a run can reach: quota code runs, but never refuses.
    path = workdir / "callers.toml"
    path.write_text(
        "[[callers]]\n"
        'id = "bench"\n'
        f'key_sha256 = "{digest}"\n'
        'allowed_models = ["*"]\n'
        "[callers.limits]\n"
        "requests_per_minute = 100000000\n"
        "tokens_per_minute = 100000000000\n"
        'usd_per_day = "1000000"\n',
        encoding="utf-8",
    )
    return path


def _server_options_env(options: Options) -> dict[str, str]:
    if not options.server_options:
        return {}
    return {"BENCH_GRPC_SERVER_OPTIONS": orjson.dumps(list(options.server_options)).decode()}


def _spawn_gateway(
    procs: Processes,
    workdir: Path,
    upstream: Upstream,
    name: str,
    loop: str,
    extra_env: Mapping[str, str],
    *,
    exporters: bool = True,
) -> Server:
    address = f"127.0.0.1:{free_port()}"
    env = {
        "OPENROUTER_API_KEY": UPSTREAM_KEY,
        "OPENROUTER_BASE_URL": upstream.base_url,
        "OPENROUTER_DEFAULT_MODEL": MODEL,
        "GATEWAY_SIMULATOR": "false",
        "GATEWAY_LISTEN": address,
        "GATEWAY_CALLERS_FILE": str(_callers_file(workdir)),
        "GATEWAY_SHUTDOWN_GRACE_S": "1",
        # The SQLite usage ledger (in the run's folder) and quotas (the callers file sets
        # limits) are always on. Variables the service does not know are ignored.
        "GATEWAY_LEDGER_PATH": str(workdir / f"{name}-usage.sqlite3"),
        "GATEWAY_EVENT_LOOP": loop,
    }
    if exporters:
        # The full feature path: traces exported over OTLP to the sink, metrics on a
        # Prometheus endpoint.
        env |= {
            "GATEWAY_PROMETHEUS_PORT": str(
                free_port() if name != "gateway" else upstream.metrics_port
            ),
            "OTEL_TRACES_EXPORTER": "otlp",
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": upstream.otlp_endpoint,
            "OTEL_EXPORTER_OTLP_INSECURE": "true",
        }
    env |= extra_env
    # The wrapper only applies prototype switches; without them the service runs as shipped.
    prototype = any(key.startswith("BENCH_") for key in extra_env)
    module = "bench.run_service" if prototype else "service"
    return Server(procs.spawn(name, python("-m", module), env), address)


def _spawn_floor(
    procs: Processes, base_url: str, name: str, loop: str, extra_env: Mapping[str, str]
) -> Server:
    address = f"127.0.0.1:{free_port()}"
    env = {"OPENROUTER_API_KEY": UPSTREAM_KEY, "GATEWAY_EVENT_LOOP": loop, **extra_env}
    argv = python("-m", "bench.floor", "--upstream", base_url, "--listen", address)
    return Server(procs.spawn(name, argv, env), address)


def _spawners(
    options: Options, procs: Processes, workdir: Path, upstream: Upstream
) -> dict[str, Callable[[str], Server]]:
    """How to start each gRPC target, by target name; called with a process name."""
    common = _server_options_env(options)
    redis = {"GATEWAY_REDIS_URL": upstream.redis_url} if upstream.redis_url else {}
    gateway_env = {**common, **redis, **dict(options.gateway_env)}
    spawners: dict[str, Callable[[str], Server]] = {
        "gateway": lambda name: _spawn_gateway(
            procs, workdir, upstream, name, options.gateway_loop, gateway_env
        ),
        "shipped": lambda name: _spawn_gateway(
            procs, workdir, upstream, name, options.gateway_loop, gateway_env, exporters=False
        ),
        "floor": lambda name: _spawn_floor(
            procs, upstream.base_url, name, options.floor_loop, common
        ),
    }
    if options.variant_of == "gateway":
        variant_env = {**gateway_env, **dict(options.variant_env)}
        spawners["variant"] = lambda name: _spawn_gateway(
            procs,
            workdir,
            upstream,
            name,
            options.variant_loop or options.gateway_loop,
            variant_env,
        )
    elif options.variant_of == "floor":
        floor_env = {**common, **dict(options.variant_env)}
        spawners["variant"] = lambda name: _spawn_floor(
            procs, upstream.base_url, name, options.variant_loop or options.floor_loop, floor_env
        )
    return spawners


def _start_redis(procs: Processes) -> str:
    """A redis-server (from PATH; ``make ensure-redis`` installs Debian's) for quotas
    shared by several workers, without persistence."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise BenchError("--redis: redis-server is not on PATH (make ensure-redis)")
    port = free_port()
    argv = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly"]
    child = procs.spawn("redis", [*argv, "no", "--daemonize", "no"])
    child.wait_for_line_containing("Ready to accept connections", _STARTUP_TIMEOUT_S)
    return f"redis://127.0.0.1:{port}/0"


def _start_measured(server: Server) -> dict[str, float]:
    startup_s = wait_serving(server.child, server.address, _STARTUP_TIMEOUT_S)
    time.sleep(_IDLE_SETTLE_S)
    return {"startup_s": startup_s, "idle_rss_mb": server.child.rss_mb()}


def _uses_uvloop(child: Child) -> bool:
    """Whether the server (or, under a supervisor, each worker) runs on uvloop."""
    tree = process_tree(child.pid)
    servers = tree[1:] or tree  # a supervisor's own loop serves no call
    return all("uvloop" in loaded_libraries(pid) for pid in servers)


@contextmanager
def running_stack(options: Options, log: Callable[[str], None]) -> Iterator[Stack]:
    workdir = Path(tempfile.mkdtemp(prefix="llmgw-bench-"))
    try:
        with Processes(workdir) as procs, OtlpSink() as sink:
            simulator = procs.spawn(
                "simulator",
                python(
                    *("-m", "service.simulator", "--host", "127.0.0.1", "--port", "0"),
                    *("--fast", "--completion-tokens", str(COMPLETION_TOKENS)),
                    *("--loop", options.simulator_loop),
                ),
                {"SIMULATOR_EXPECTED_API_KEY": UPSTREAM_KEY},
            )
            base_url = simulator.wait_for_line("http://", _STARTUP_TIMEOUT_S).strip()
            redis_url = _start_redis(procs) if options.redis else ""
            upstream = Upstream(base_url, sink.endpoint, free_port(), redis_url)
            log(f"simulator: {base_url} (pid {simulator.pid}); OTLP sink: {sink.endpoint}")
            spawners = _spawners(options, procs, workdir, upstream)
            wanted = [t for t in options.targets if t in spawners]
            if options.variant_of:
                wanted.append("variant")
            startup: dict[str, list[dict[str, float]]] = {target: [] for target in wanted}
            extra_runs = options.startup_runs - 1 if "startup" in options.scenarios else 0
            for run in range(extra_runs):
                for target in wanted:
                    server = spawners[target](f"{target}-{run}")
                    startup[target].append(_start_measured(server))
                    procs.stop(server.child)
            servers: dict[str, Server] = {}
            for target in wanted:
                servers[target] = server = spawners[target](target)
                startup[target].append(_start_measured(server))
                log(
                    f"{target}: {server.address} (pid {server.child.pid}, "
                    f"uvloop={_uses_uvloop(server.child)})"
                )
            servers["direct"] = Server(simulator, base_url)
            ordered = {t: servers[t] for t in (*options.targets, "variant") if t in servers}
            if "gateway" not in ordered:
                # The telemetry check and the profile read the gateway; it is always started.
                raise BenchError("--targets must include gateway")
            load = LoadGenerator(procs, options.client_loop)
            yield Stack(procs, workdir, simulator, upstream, sink, ordered, load, startup)
    finally:
        if options.keep_logs:
            log(f"logs kept in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


def telemetry_check(stack: Stack) -> dict[str, Any]:
    """Evidence that telemetry was on: spans the sink received, series the gateway serves."""
    series = 0
    url = f"http://127.0.0.1:{stack.upstream.metrics_port}/metrics"
    try:
        with urllib.request.urlopen(url, timeout=5) as reply:
            text = reply.read().decode("utf-8", "replace")
        series = sum(1 for line in text.splitlines() if line.startswith("llmgateway"))
    except OSError:
        series = -1
    return {
        "spans_exported": stack.sink.spans,
        "span_exports": stack.sink.exports,
        "metric_series": series,
    }


# --- scenarios ----------------------------------------------------------------------------


def _job(
    stack: Stack, options: Options, target: str, kind: str, concurrency: int
) -> dict[str, Any]:
    job: dict[str, Any] = {
        "kind": kind,
        "concurrency": concurrency,
        "warmup_s": options.warmup_s,
        "duration_s": options.duration_s,
        "callers_per_channel": options.callers_per_channel,
        "client": options.client,
        "model": MODEL,
        "caller_key": CALLER_KEY,
        "upstream_key": UPSTREAM_KEY,
        "grpc_options": list(options.client_options),
    }
    job.update(
        protocol="http" if target == "direct" else "grpc", address=stack.servers[target].address
    )
    return job


def _server(stack: Stack, target: str) -> Child:
    return stack.servers[target].child


def _measure(
    stack: Stack, options: Options, kind: str, concurrency: int, log: Callable[[str], None]
) -> dict[str, dict[str, Any]]:
    """``rounds`` interleaved runs of each target; samples merged per target."""
    merged: dict[str, dict[str, Any]] = {
        target: {
            "completed": 0,
            "completed_total": 0,
            "chunks": 0,
            "window_s": 0.0,
            "latencies_us": [],
            "ttft_us": [],
            "errors": {},
            "rounds_per_s": [],
            "server_cpu_s": 0.0,
            "simulator_cpu_s": 0.0,
            "generator_cpu_s": 0.0,
            "foreign_cpu_s": 0.0,
            "wall_s": 0.0,
        }
        for target in stack.targets
    }
    targets = stack.targets
    for round_index in range(options.rounds):
        shift = round_index % len(targets)
        for target in targets[shift:] + targets[:shift]:
            server = _server(stack, target)
            cpu_before = server.cpu_s(), stack.simulator.cpu_s()
            machine_before = machine_busy_seconds(), own_cpu_seconds(stack.procs.children)
            wall_before = time.perf_counter()
            result = stack.load.run(
                _job(stack, options, target, kind, concurrency),
                timeout_s=options.warmup_s + options.duration_s + 90,
            )
            _check_alive(stack)
            cpu_after = server.cpu_s(), stack.simulator.cpu_s()
            busy = machine_busy_seconds() - machine_before[0]
            own = own_cpu_seconds(stack.procs.children) - machine_before[1]
            into = merged[target]
            into["foreign_cpu_s"] += max(0.0, busy - own)
            into["wall_s"] += time.perf_counter() - wall_before
            for key in ("completed", "completed_total", "chunks", "window_s", "generator_cpu_s"):
                into[key] += result[key]
            into["latencies_us"] += result["latencies_us"]
            into["ttft_us"] += result["ttft_us"]
            into["rounds_per_s"].append(result["completed"] / result["window_s"])
            if target != "direct":
                into["server_cpu_s"] += cpu_after[0] - cpu_before[0]
            into["simulator_cpu_s"] += cpu_after[1] - cpu_before[1]
            for name, count in result["errors"].items():
                into["errors"][name] = into["errors"].get(name, 0) + count
            if result["errors"]:
                log(f"  ! {kind} c={concurrency} {target}: errors {result['errors']}")
    return {target: _summarize(data) for target, data in merged.items()}


def _check_alive(stack: Stack) -> None:
    for target, server in stack.servers.items():
        if not server.child.alive():
            raise server.child.fail(f"{target} exited ({server.child.popen.returncode}) mid-run")


def _summarize(data: Mapping[str, Any]) -> dict[str, Any]:
    window = data["window_s"] or float("nan")
    total = data["completed_total"] or float("nan")
    return {
        "requests": data["completed"],
        "per_s": data["completed"] / window,
        "per_s_rounds": data["rounds_per_s"],
        "chunks_per_s": data["chunks"] / window,
        "latency_ms": summarize_ms(data["latencies_us"]),
        "ttft_ms": summarize_ms(data["ttft_us"]),
        "errors": data["errors"],
        "server_cpu_us_per_request": data["server_cpu_s"] / total * 1e6,
        "simulator_cpu_us_per_request": data["simulator_cpu_s"] / total * 1e6,
        "generator_cpu_us_per_request": data["generator_cpu_s"] / total * 1e6,
        "generator_cores": data["generator_cpu_s"] / window,
        # CPU that processes outside this benchmark used meanwhile (a shared machine).
        "foreign_cores": data["foreign_cpu_s"] / (data["wall_s"] or float("nan")),
    }


def run_unary(stack: Stack, options: Options, log: Callable[[str], None]) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for concurrency in options.unary_concurrency:
        results[str(concurrency)] = found = _measure(stack, options, "unary", concurrency, log)
        log(
            f"unary c={concurrency}: "
            + ", ".join(
                f"{t} {found[t]['per_s']:.0f}/s p50 {found[t]['latency_ms']['p50']:.2f} ms"
                for t in stack.targets
            )
        )
    return results


def run_stream(stack: Stack, options: Options, log: Callable[[str], None]) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for concurrency in options.stream_concurrency:
        results[str(concurrency)] = found = _measure(stack, options, "stream", concurrency, log)
        log(
            f"stream c={concurrency}: "
            + ", ".join(
                f"{t} ttft p50 {found[t]['ttft_ms']['p50']:.2f} ms "
                f"{found[t]['chunks_per_s']:.0f} tokens/s"
                for t in stack.targets
            )
        )
    return results


def run_hold(stack: Stack, options: Options, log: Callable[[str], None]) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for target in (t for t in stack.targets if t != "direct"):
        server = _server(stack, target)
        job = _job(stack, options, target, "hold", options.hold_streams)
        job.update(
            prompt=HOLD_PROMPT,
            callers_per_channel=100,
            rss_pids=process_tree(server.pid),
            hold_sample_s=options.hold_sample_s,
        )
        before = server.rss_mb()
        result = stack.load.run(job, timeout_s=150)
        _check_alive(stack)
        time.sleep(_IDLE_SETTLE_S)
        result.update(
            rss_mb_before=before,
            rss_mb=result["rss_kb_max"] / 1024,
            rss_mb_after=server.rss_mb(),
        )
        results[target] = result
        log(
            f"hold {target}: {result['open_during_sample']}/{options.hold_streams} open, "
            f"RSS {result['rss_mb']:.1f} MB (before {before:.1f}), errors {result['errors']}"
        )
    return results


def run_live(stack: Stack, options: Options, log: Callable[[str], None]) -> dict[str, Any]:
    """Live streams at a real pace, stepped until the relay lag's p99 passes 50 ms."""
    # The traced gateway, the floor and a variant: stepping takes a minute or two a target.
    servers = {t: s for t, s in stack.servers.items() if t in ("gateway", "floor", "variant")}
    return capacity.run_live(
        servers,
        stack.simulator.pid,
        lambda target, streams: _job(stack, options, target, "live", streams),
        lambda job, timeout_s: stack.load.run(job, timeout_s=timeout_s),
        lambda: _check_alive(stack),
        steps=options.live_steps,
        window_s=options.live_window_s,
        pace_ms=LIVE_PACE_MS,
        log=log,
    )


def summarize_startup(startup: Mapping[str, list[dict[str, float]]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for target, runs in startup.items():
        times = [run["startup_s"] for run in runs]
        rss = [run["idle_rss_mb"] for run in runs]
        out[target] = {
            "runs": list(runs),
            "startup_s_median": statistics.median(times) if times else float("nan"),
            "startup_s_max": max(times, default=float("nan")),
            "idle_rss_mb_median": statistics.median(rss) if rss else float("nan"),
        }
    return out


def _thread_split(
    pid: int, before: Mapping[str, tuple[str, float]], after: Mapping[str, tuple[str, float]]
) -> dict[str, float]:
    """CPU seconds by kind of thread: the event loop, gRPC core's, and other threads."""
    split: dict[str, float] = {}
    for tid, (name, seconds) in after.items():
        used = seconds - before.get(tid, (name, 0.0))[1]
        if tid == str(pid):
            kind = "main thread (event loop)"
        elif name.startswith(("event_engine", "grpc")):
            kind = "gRPC core threads"
        else:
            kind = f"other threads ({name})"
        split[kind] = split.get(kind, 0.0) + used
    return split


# What load a profile runs under: unary at c=64, 100-token streams at c=16, or 300 live
# streams at 40 tokens a second.
_PROFILE_LOADS = {"unary": ("unary", 64), "stream": ("stream", 16), "live": ("live", 300)}


def run_profile(
    stack: Stack, options: Options, out_dir: Path, log: Callable[[str], None]
) -> dict[str, Any]:
    """py-spy on a server under load (unary at concurrency 64, or streams at 16): a flame
    graph and hot spots.

    Two passes of ``profile_s`` seconds (py-spy writes one format per run): an SVG flame
    graph and collapsed stacks, which ``bench.hotspots`` summarises. The CPU time of each
    thread is read from /proc during the second pass.
    """
    py_spy = Path(python()[0]).parent / "py-spy"
    if not py_spy.exists():
        found = shutil.which("py-spy")
        if found is None:
            raise BenchError("py-spy is not installed: .venv/bin/pip install py-spy")
        py_spy = Path(found)
    server = _server(stack, options.profile_target)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = "-".join(
        part
        for part in ("profile", options.profile_target, options.profile_kind)
        if part not in ("gateway", "unary")
    )
    outputs = {"flamegraph": out_dir / f"{stem}.svg", "raw": out_dir / f"{stem}.collapsed"}
    duration = max(1, round(options.profile_s))
    threads: dict[str, float] = {}
    requests = 0
    for fmt, path in outputs.items():
        path.unlink(missing_ok=True)
        argv = [str(py_spy), "record", "--pid", str(server.pid), "--duration", str(duration)]
        argv += ["--rate", "200", "--full-filenames", "--format", fmt, "--output", str(path)]
        # Native stacks need the process paused while sampled; Python-only sampling does not.
        argv.append("--native" if options.profile_native else "--nonblocking")
        spy = stack.procs.spawn(f"py-spy-{fmt}", argv)
        kind, concurrency = _PROFILE_LOADS[options.profile_kind]
        job = _job(stack, options, options.profile_target, kind, concurrency)
        job.update(warmup_s=0.0, duration_s=duration + 1.5)
        if kind == "live":
            job.update(ramp_s=capacity.ramp_seconds(concurrency), callers_per_channel=50)
        before = thread_cpu_seconds(server.pid)
        result = stack.load.run(job, timeout_s=duration + 90)
        threads = _thread_split(server.pid, before, thread_cpu_seconds(server.pid))
        # Per call (unary), per stream (stream), per 1,000 tokens relayed (live).
        requests = result["tokens"] // 1000 if kind == "live" else result["completed_total"]
        try:
            spy.popen.wait(timeout=30)
        finally:
            stack.procs.stop(spy)
        if not path.exists():
            raise spy.fail(f"wrote no {path}")
    summary = summarize_collapsed(outputs["raw"].read_text(encoding="utf-8"))
    log(f"profile of the {options.profile_target}: {outputs['flamegraph']}, {outputs['raw']}")
    return {
        "target": options.profile_target,
        "kind": options.profile_kind,
        "files": {k: str(v) for k, v in outputs.items()},
        "thread_cpu_us_per_request": {
            kind: seconds / max(requests, 1) * 1e6 for kind, seconds in threads.items()
        },
        **summary,
    }


def options_json(options: Options) -> dict[str, Any]:
    return asdict(options)
