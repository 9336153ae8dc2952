"""A synchronous caller of LLM Gateway: one answer, one streamed answer, one failed call.

Usage: python sync_example.py TARGET KEY   (TARGET e.g. ``dns:///localhost:50051``)
Prints one JSON object with what it saw, so that a test can check it.
"""

from __future__ import annotations

import json
import sys

import grpc
from llmgateway.client import assemble, connect, error_details
from llmgateway.v1 import completion_service_pb2 as pb
from llmgateway.v1.completion_service_pb2_grpc import CompletionServiceStub


def main(target: str, key: str) -> dict[str, object]:
    with connect(target, key, transport="local") as channel:
        stub = CompletionServiceStub(channel)
        hello = [pb.Message(role=pb.ROLE_USER, content="Hello")]
        answer = stub.Complete(
            pb.CompleteRequest(messages=hello, sampling=pb.SamplingParams(max_tokens=64)),
            timeout=30,
        )
        streamed = assemble(stub.StreamComplete(pb.StreamCompleteRequest(messages=hello)))
        try:
            stub.Complete(pb.CompleteRequest(messages=[]), timeout=30)
            failed: dict[str, object] = {}
        except grpc.RpcError as err:
            details = error_details(err)
            failed = {
                "code": details.code.name,
                "reason": details.reason,
                "request_id": details.request_id,
                "fields": [v.field for v in details.bad_request.field_violations]
                if details.bad_request
                else [],
            }
    return {
        "complete": {
            "id": answer.id,
            "content": answer.content,
            "tokens": answer.usage.total_tokens,
        },
        "stream": {
            "id": streamed.id,
            "content": streamed.content,
            "finish_reason": pb.FinishReason.Name(streamed.finish_reason),
            "tokens": streamed.usage.total_tokens,
        },
        "failed": failed,
    }


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1], sys.argv[2])))
