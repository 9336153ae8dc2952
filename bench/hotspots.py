"""Hot spots from py-spy's collapsed stacks (``--format raw``): where the samples land.

``python -m bench.hotspots bench/results/profile.collapsed`` prints the summary again.
"""

from __future__ import annotations

import re
import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

_FRAME = re.compile(r"^(?P<name>.*) \((?P<file>[^()]*?)(?::\d+)?\)$")
_SITE = re.compile(r"^.*/(?:site|dist)-packages/")
_STDLIB = re.compile(r"^.*/lib/python3\.\d+/")
_ROOT = str(Path(__file__).resolve().parent.parent) + "/"
# First match wins; matched against the shortened file name of a frame.
_CATEGORIES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("service (ours)", ("service/",)),
    ("bench", ("bench/",)),
    ("grpc", ("grpc", "cygrpc", "libgrpc")),
    ("protobuf", ("google/protobuf", "_message", "upb")),
    ("aiohttp/yarl/multidict", ("aiohttp", "yarl", "multidict", "propcache")),
    ("json (orjson/json)", ("orjson", "json/")),
    ("logging", ("logging/",)),
    ("pydantic", ("pydantic",)),
    ("opentelemetry", ("opentelemetry",)),
    ("asyncio/uvloop", ("asyncio/", "uvloop", "selectors.py")),
)


def _short(file: str) -> str:
    """``service/…`` for ours, ``aiohttp/…`` for packages, ``asyncio/…`` for the stdlib."""
    if "-packages/" in file:
        return _SITE.sub("", file)
    if file.startswith(_ROOT):
        return file[len(_ROOT) :]
    return _STDLIB.sub("", file)


def _function(frame: str) -> tuple[str, str]:
    """(``name (file)``, file) of a py-spy frame, without the line number."""
    match = _FRAME.match(frame)
    if match is None:
        return frame, frame
    file = _short(match["file"])
    return f"{match['name']} ({file})", file


# Without --native, C and Cython code shows as the time of the Python frame that called it:
# a loop callback's, or a thread's run(). In these servers that is mostly grpc.aio's Cython
# (its call handling on the loop, its completion-queue poller in a thread).
_OPAQUE = {
    "Handle._run (asyncio/events.py)": "C/Cython under loop callbacks (mostly grpc.aio)",
    "Thread.run (threading.py)": "C/Cython in threads (mostly grpc.aio's poller)",
    # On uvloop the loop itself is C: its callbacks (and grpc.aio's) land here.
    "Runner.run (asyncio/runners.py)": "C/Cython under the uvloop loop (uvloop, grpc.aio)",
}
# Native frames (py-spy --native) where a thread waits rather than works.
_IDLE = frozenset(
    {
        "epoll_wait",
        "epoll_pwait",
        "poll",
        "select",
        "pthread_cond_wait",
        "pthread_cond_timedwait",
        "sem_wait",
        "sem_timedwait",
        "nanosleep",
        "clock_nanosleep",
        "accept4",
        "take_gil",
        "PyThread_acquire_lock_timed",
    }
)
# Native libraries named after what they do; the interpreter and libc are not.
_NATIVE: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("grpc", ("cygrpc", "libgrpc")),
    ("protobuf", ("_message.", "_upb", "libprotobuf")),
    ("aiohttp/yarl/multidict", ("_http_parser", "_http_writer", "multidict", "yarl", "propcache")),
    ("json (orjson/json)", ("orjson", "_json")),
    ("asyncio/uvloop", ("uvloop", "_asyncio")),
    ("sqlite (ledger)", ("_sqlite", "libsqlite")),
)


def _native_category(file: str) -> str | None:
    for name, needles in _NATIVE:
        if any(needle in file for needle in needles):
            return name
    return None


def responsible(functions: Sequence[tuple[str, str]]) -> str:
    """The component a native stack's leaf works for: the nearest named native library or
    Python file, walking up from the leaf past the interpreter and libc."""
    for _, file in reversed(functions):
        native = _native_category(file)
        if native is not None:
            return native
        if file.endswith(".py"):
            return category(file)
    return "other (stdlib, C)"


def category(file: str) -> str:
    for name, needles in _CATEGORIES:
        if any(needle in file for needle in needles):
            return name
    return "other (stdlib, C)"


def summarize_collapsed(text: str, top: int = 15) -> dict[str, Any]:
    """Self time by category and function on the event loop's thread, inclusive time of our
    own functions there, and the top functions of the other threads.

    Stacks rooted in ``Thread._bootstrap`` belong to other threads (executors, gRPC's
    poller, whose Cython frames py-spy cannot see and may count while it waits in epoll);
    the rest run on the main thread, where the event loop is.
    """
    self_time: Counter[str] = Counter()
    by_category: Counter[str] = Counter()
    by_component: Counter[str] = Counter()
    idle = 0
    inclusive_ours: Counter[str] = Counter()
    other_threads: Counter[str] = Counter()
    main_total = other_total = 0
    for line in text.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        functions = [_function(frame) for frame in stack.split(";")]
        if any(name.split(" (", 1)[0] in _IDLE for name, _ in functions):
            idle += count
            continue
        leaf, leaf_file = functions[-1]
        component = _OPAQUE.get(leaf) or responsible(functions)
        by_component[component] += count
        if any(name.startswith("Thread._bootstrap ") for name, _ in functions[:4]):
            other_total += count
            other_threads[leaf] += count
            continue
        main_total += count
        self_time[leaf] += count
        by_category[_OPAQUE.get(leaf) or category(leaf_file)] += count
        for function in {
            name
            for name, file in functions
            if file.startswith("service/") and file != "service/__main__.py"
        }:
            inclusive_ours[function] += count
    total = main_total + other_total

    def share(counter: Counter[str], limit: int) -> list[tuple[str, float]]:
        return [(name, 100 * n / max(total, 1)) for name, n in counter.most_common(limit)]

    return {
        "samples": total,
        "idle_samples_dropped": idle,
        "main_thread_percent": 100 * main_total / max(total, 1),
        "by_component": share(by_component, len(by_component)),
        "self_by_category": share(by_category, len(by_category)),
        "top_self": share(self_time, top),
        "ours_inclusive": share(inclusive_ours, top),
        "other_threads_top": share(other_threads, 5),
    }


def render(summary: dict[str, Any]) -> str:
    lines = []
    threads = summary.get("thread_cpu_us_per_request")
    if threads:
        what = f"{summary.get('target', 'server')}, {summary.get('kind', 'unary')}"
        lines.append(f"CPU per call by thread ({what}; /proc):")
        lines += [f"  {us:7.0f} µs  {kind}" for kind, us in sorted(threads.items())]
    lines.append(
        f"py-spy: {summary['samples']} samples, idle excluded; "
        f"{summary['main_thread_percent']:.0f} % on the main thread (percent of all samples):"
    )
    for title, key in (
        (
            "all threads, by the component the work is for (native frames attributed)",
            "by_component",
        ),
        ("main thread, self time by category", "self_by_category"),
        ("main thread, top functions by self time", "top_self"),
        ("main thread, our functions (service/) by inclusive time", "ours_inclusive"),
        ("other threads, top functions by self time", "other_threads_top"),
    ):
        lines.append(f"  {title}:")
        lines += [f"    {pct:5.1f} %  {name}" for name, pct in summary[key]]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 1:
        print("usage: python -m bench.hotspots PROFILE.collapsed", file=sys.stderr)
        return 2
    print(render(summarize_collapsed(Path(args[0]).read_text(encoding="utf-8"))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
