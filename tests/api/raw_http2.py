"""A bare HTTP/2 client for gRPC calls no gRPC library would send.

grpc's own clients refuse header values with CR/LF or other control characters before they
reach the wire; a hostile client need not. This one sends whatever headers and bytes it is
given (``h2`` with outbound validation off) and returns the status and trailers it gets.
"""

from __future__ import annotations

import asyncio
import queue
import socket
import struct
import time
from base64 import b64decode
from collections.abc import Sequence
from dataclasses import dataclass, field

import h2.config
import h2.connection
import h2.errors
import h2.events


@dataclass
class RawReply:
    headers: dict[str, str] = field(default_factory=dict)
    trailers: dict[str, str] = field(default_factory=dict)
    messages: list[bytes] = field(default_factory=list)
    reset: int | None = None
    """The RST_STREAM error code, when the server reset the stream."""

    def trailer(self, name: str) -> str | None:
        """A trailer; a call that fails before any message is answered with headers only."""
        return self.trailers.get(name, self.headers.get(name))

    @property
    def grpc_status(self) -> int | None:
        value = self.trailer("grpc-status")
        return None if value is None else int(value)

    @property
    def status_details(self) -> bytes | None:
        value = self.trailer("grpc-status-details-bin")
        if value is None:
            return None
        return b64decode(value + "=" * (-len(value) % 4))


def frame(message: bytes) -> bytes:
    """One gRPC length-prefixed message (uncompressed)."""
    return struct.pack(">BI", 0, len(message)) + message


async def raw_call(
    address: str,
    method: str,
    body: bytes,
    metadata: Sequence[tuple[str, str | bytes]] = (),
    *,
    timeout_s: float = 10.0,
) -> RawReply:
    """One gRPC call over a fresh connection: ``body`` is sent as is (already framed)."""
    host, port = address.rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    config = h2.config.H2Configuration(
        client_side=True, validate_outbound_headers=False, normalize_outbound_headers=False
    )
    conn = h2.connection.H2Connection(config=config)
    conn.initiate_connection()
    headers: list[tuple[bytes, bytes]] = [
        (b":method", b"POST"),
        (b":scheme", b"http"),
        (b":path", method.encode()),
        (b":authority", address.encode()),
        (b"content-type", b"application/grpc"),
        (b"te", b"trailers"),
    ]
    headers += [
        (k.encode(), v if isinstance(v, bytes) else v.encode("latin-1")) for k, v in metadata
    ]
    stream_id = conn.get_next_available_stream_id()
    conn.send_headers(stream_id, headers)
    conn.send_data(stream_id, body, end_stream=True)
    writer.write(conn.data_to_send())
    reply = RawReply()
    buffer = b""
    try:
        async with asyncio.timeout(timeout_s):
            done = False
            while not done:
                data = await reader.read(65536)
                if not data:
                    break
                for event in conn.receive_data(data):
                    if isinstance(event, h2.events.ResponseReceived):
                        reply.headers = _decode(event.headers)
                    elif isinstance(event, h2.events.TrailersReceived):
                        reply.trailers = _decode(event.headers)
                    elif isinstance(event, h2.events.DataReceived):
                        conn.acknowledge_received_data(event.flow_controlled_length, stream_id)
                        buffer += event.data
                    elif isinstance(event, h2.events.StreamReset):
                        reply.reset = event.error_code
                        done = True
                    elif isinstance(event, h2.events.StreamEnded):
                        done = True
                writer.write(conn.data_to_send())
    finally:
        writer.close()
        await writer.wait_closed()
    while len(buffer) >= 5:
        _, length = struct.unpack(">BI", buffer[:5])
        reply.messages.append(buffer[5 : 5 + length])
        buffer = buffer[5 + length :]
    return reply


def _decode(headers: Sequence[tuple[bytes | str, bytes | str]]) -> dict[str, str]:
    found: dict[str, str] = {}
    for name, value in headers:
        key = name.decode() if isinstance(name, bytes) else name
        found[key] = value.decode("latin-1") if isinstance(value, bytes) else value
    return found


def call_then_reset(
    address: str,
    method: str,
    body: bytes,
    metadata: Sequence[tuple[str, str]],
    *,
    reset_at: queue.Queue[float],
) -> None:
    """Send one call, then reset its stream with CANCEL at the ``time.monotonic()`` put in
    ``reset_at`` (once the test knows when the call arrived).

    Blocking, for a thread: it goes on while the event loop under test is held up, as a real
    client (another process) would."""
    host, port = address.rsplit(":", 1)
    with socket.create_connection((host, int(port))) as sock:
        conn = h2.connection.H2Connection(config=h2.config.H2Configuration(client_side=True))
        conn.initiate_connection()
        stream_id = conn.get_next_available_stream_id()
        conn.send_headers(
            stream_id,
            [
                (":method", "POST"),
                (":scheme", "http"),
                (":path", method),
                (":authority", address),
                ("content-type", "application/grpc"),
                ("te", "trailers"),
                *metadata,
            ],
        )
        conn.send_data(stream_id, body, end_stream=True)
        sock.sendall(conn.data_to_send())
        time.sleep(max(0.0, reset_at.get(timeout=10) - time.monotonic()))
        conn.reset_stream(stream_id, h2.errors.ErrorCodes.CANCEL)
        sock.sendall(conn.data_to_send())
