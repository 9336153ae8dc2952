"""An asyncio caller of LLM Gateway: one answer, one streamed answer, one failed call.

Usage: python async_example.py TARGET KEY   (TARGET e.g. ``dns:///localhost:50051``)
Prints one JSON object with what it saw, so that a test can check it.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncIterator

import grpc
from llmgateway.client import assemble_async, connect_async, error_details
from llmgateway.v1 import completion_service_pb2 as pb
from llmgateway.v1.completion_service_pb2_grpc import CompletionServiceStub


async def main(target: str, key: str) -> dict[str, object]:
    async with connect_async(target, key, transport="local") as channel:
        stub = CompletionServiceStub(channel)
        hello = [pb.Message(role=pb.ROLE_USER, content="Hello")]
        answer = await stub.Complete(pb.CompleteRequest(messages=hello), timeout=30)
        pieces: list[str] = []
        call = stub.StreamComplete(pb.StreamCompleteRequest(messages=hello))
        streamed = await assemble_async(_printing(call, pieces))
        try:
            await stub.Complete(pb.CompleteRequest(messages=[]), timeout=30)
            failed: dict[str, object] = {}
        except grpc.aio.AioRpcError as err:
            details = error_details(err)
            failed = {"code": details.code.name, "reason": details.reason}
    return {
        "complete": {"id": answer.id, "content": answer.content},
        "stream": {"content": streamed.content, "pieces": len(pieces)},
        "failed": failed,
    }


async def _printing(
    call: grpc.aio.UnaryStreamCall[pb.StreamCompleteRequest, pb.StreamCompleteResponse],
    pieces: list[str],
) -> AsyncIterator[pb.StreamCompleteResponse]:
    # Show text as it arrives while the assembler builds the whole answer.
    async for message in call:
        if message.HasField("delta"):
            pieces.append(message.delta.content)
        yield message


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main(sys.argv[1], sys.argv[2]))))
