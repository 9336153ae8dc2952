"""``python -m bench.parse_path``: what parsing requests in the handler costs (issue #12).

The gateway registers its methods without a request deserializer and parses the bytes in
its call frame (``service.api.frame``), so that undecodable bytes get a status of their own.
This compares that with gRPC's own deserializer on the same request:

* **micro**: ns per parse of a typical ``CompleteRequest`` (three messages, ~1.5 kB),
  ``FromString`` as gRPC calls it versus through the frame's ``_parse``;
* **server**: a grpc.aio server in a child process on uvloop, one unary method registered
  both ways, driven by 64 concurrent callers; CPU of the server process per call (utime +
  stime from ``/proc``), rounds interleaved A/B/A/B so drift falls on both alike.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import time
import timeit
from pathlib import Path

import grpc
from llmgateway.v1 import completion_service_pb2 as pb

from service.api.frame import _parse

_SERVER = r"""
import asyncio, sys
import grpc, uvloop
from llmgateway.v1 import completion_service_pb2 as pb
from service.api.frame import _parse

REPLY = pb.CompleteResponse(content="ok").SerializeToString()

async def by_grpc(request, context):
    assert request.messages
    return REPLY

async def in_handler(raw, context):
    request = _parse(pb.CompleteRequest.FromString, raw)
    assert request.messages
    return REPLY

async def main():
    server = grpc.aio.server()
    handlers = {
        "Grpc": grpc.unary_unary_rpc_method_handler(
            by_grpc, request_deserializer=pb.CompleteRequest.FromString
        ),
        "Handler": grpc.unary_unary_rpc_method_handler(in_handler),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("b.P", handlers),))
    server.add_registered_method_handlers("b.P", handlers)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    print(port, flush=True)
    await server.wait_for_termination()

uvloop.run(main())
"""


def sample_request() -> pb.CompleteRequest:
    return pb.CompleteRequest(
        model="openai/gpt-4o-mini",
        messages=[
            pb.Message(role=pb.ROLE_SYSTEM, content="You are a helpful assistant. " * 8),
            pb.Message(role=pb.ROLE_USER, content="Tell me about the Matterhorn. " * 20),
            pb.Message(role=pb.ROLE_ASSISTANT, content="It is a mountain in the Alps. " * 10),
        ],
        end_user_id="user-1234",
    )


def micro(raw: bytes, number: int) -> tuple[float, float]:
    parse = pb.CompleteRequest.FromString
    direct = min(timeit.repeat(lambda: parse(raw), number=number, repeat=5)) / number
    framed = min(timeit.repeat(lambda: _parse(parse, raw), number=number, repeat=5)) / number
    return direct * 1e9, framed * 1e9


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def drive(port: int, method: str, raw: bytes, calls: int, concurrency: int) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = channel.unary_unary(
            f"/b.P/{method}", request_serializer=bytes, response_deserializer=bytes
        )
        per_caller = calls // concurrency

        async def caller() -> None:
            for _ in range(per_caller):
                await call(raw)

        await asyncio.gather(*(caller() for _ in range(concurrency)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=20_000, help="calls per round and method")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--concurrency", type=int, default=64)
    args = parser.parse_args()
    raw = sample_request().SerializeToString()

    direct_ns, framed_ns = micro(raw, 20_000)
    print(f"request: {len(raw)} bytes")
    print(f"micro: FromString {direct_ns:,.0f} ns, through the frame's _parse {framed_ns:,.0f} ns")

    server = subprocess.Popen(
        [sys.executable, "-c", _SERVER],
        stdout=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    try:
        assert server.stdout is not None
        port = int(server.stdout.readline())
        asyncio.run(drive(port, "Grpc", raw, 2_000, args.concurrency))  # warm-up
        asyncio.run(drive(port, "Handler", raw, 2_000, args.concurrency))
        samples: dict[str, list[float]] = {"Grpc": [], "Handler": []}
        for round_ in range(args.rounds):
            order = ("Grpc", "Handler") if round_ % 2 == 0 else ("Handler", "Grpc")
            for method in order:
                before = cpu_seconds(server.pid)
                started = time.perf_counter()
                asyncio.run(drive(port, method, raw, args.calls, args.concurrency))
                elapsed = time.perf_counter() - started
                used = cpu_seconds(server.pid) - before
                samples[method].append(used / args.calls * 1e6)
                print(
                    f"round {round_ + 1} {method:<8} {args.calls / elapsed:8,.0f} calls/s "
                    f"server CPU {used / args.calls * 1e6:6.1f} µs/call"
                )
    finally:
        server.terminate()
        server.wait()
    grpc_us = statistics.median(samples["Grpc"])
    handler_us = statistics.median(samples["Handler"])
    print(
        f"server CPU per call, median of {args.rounds}: gRPC's deserializer {grpc_us:.1f} µs, "
        f"parsed in the handler {handler_us:.1f} µs ({(handler_us / grpc_us - 1) * 100:+.1f} %)"
    )


if __name__ == "__main__":
    main()
