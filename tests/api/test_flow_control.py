"""A slow reader holds back the upstream read: the gateway does not pull an answer ahead of it.

Measured from outside: how many tokens the simulator wrote before the stalled reader left. Two
buffers may fill meanwhile: the client's HTTP/2 receive window (kept at its initial 64 KiB by
turning off BDP probing, which otherwise keeps growing it: ~28k messages after 3 s) and the
loopback TCP buffers between simulator and gateway (MiBs, ~6 MB of SSE here). A gateway that
read ahead into a queue pulls the simulator at 50k-70k tokens/s, so it takes far more within the
stall, which is long enough to tell the two apart.
"""

from __future__ import annotations

import asyncio

import grpc
from llmgateway.v1 import completion_service_pb2 as pb
from llmgateway.v1 import completion_service_pb2_grpc as pb_grpc

from tests.harness import auth, start_gateway, user

TOKENS = 200_000  # ~45 MB of SSE: more than any socket buffer holds
READ = 10
STALL_S = 2.0
# Between what the buffers held (measured: 25.6k-26.7k tokens, once 53k) and what a gateway
# pulling the stream ahead into a queue took in the same stall (measured: 114k-148k tokens).
MAX_AHEAD = 80_000


async def test_a_stalled_reader_stops_the_upstream_read() -> None:
    async with (
        start_gateway(gateway={"max_tokens_cap": TOKENS}) as gw,
        grpc.aio.insecure_channel(
            gw.server.address, options=[("grpc.http2.bdp_probe", 0)]
        ) as channel,
    ):
        call = pb_grpc.CompletionServiceStub(channel).StreamComplete(
            pb.StreamCompleteRequest(
                messages=[user(f"A long one [[sim:tokens={TOKENS}]]")],
                sampling=pb.SamplingParams(max_tokens=TOKENS),
            ),
            metadata=auth(),
        )
        generation_id = ""
        deltas = 0
        while deltas < READ:
            message = await call.read()
            assert isinstance(message, pb.StreamCompleteResponse)
            if message.HasField("start"):
                generation_id = message.start.id
            deltas += message.HasField("delta")

        # The slow reader: it takes nothing more for a while. This pause is the scenario
        # under test, not a wait for something to happen.
        await asyncio.sleep(STALL_S)

        assert generation_id not in gw.sim.state.generations, "the whole answer was read ahead"
        call.cancel()
        disconnect = await gw.sim.state.wait_for_disconnect()
        assert disconnect.generation_id == generation_id
        assert disconnect.tokens_sent - deltas < MAX_AHEAD, disconnect
