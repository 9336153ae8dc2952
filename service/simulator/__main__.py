"""`python -m service.simulator`: serve the simulator until SIGINT or SIGTERM.

The expected API key, if any, comes from the SIMULATOR_EXPECTED_API_KEY environment
variable rather than a flag, so it never shows up in a process listing.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys

from .config import SimulatorConfig
from .runner import run_simulator


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m service.simulator", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8090)
    parser.add_argument(
        "--fast", action="store_true", help="benchmark mode: no pacing, no recording"
    )
    parser.add_argument("--keepalive-comments", type=int, default=3)
    parser.add_argument("--token-delay-ms", type=float, default=0.0)
    parser.add_argument("--completion-tokens", type=int, default=24)
    parser.add_argument(
        "--loop",
        choices=("asyncio", "uvloop"),
        default="asyncio",
        help="event loop (uvloop makes a benchmark's simulator cheaper)",
    )
    return parser.parse_args(argv)


async def _serve(args: argparse.Namespace) -> None:
    config = SimulatorConfig(
        fast=args.fast,
        keepalive_comments=args.keepalive_comments,
        token_delay_s=args.token_delay_ms / 1000,
        expected_api_key=os.environ.get("SIMULATOR_EXPECTED_API_KEY") or None,
        default_completion_tokens=args.completion_tokens,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    async with run_simulator(config, host=args.host, port=args.port) as sim:
        print(sim.base_url, flush=True)
        await stop.wait()


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    if args.loop == "uvloop":
        import uvloop

        uvloop.run(_serve(args))
    else:
        asyncio.run(_serve(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
