"""A seeded generator of hostile calls to every RPC, and a time-bounded runner.

Each case is one call: a method (every CompletionService RPC, health, reflection), a request
(random bytes, a valid message mutated, protobuf-shaped garbage, or a structurally valid
message with random field values), random metadata (keys, request ids, trace headers) and a
deadline. Requests go out as raw bytes through a generic channel call (identity
serializers), so nothing on the client side rejects or repairs them. A case is reproducible
from (seed, worker, index).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, cast

import grpc
from google.protobuf import descriptor, message_factory
from google.protobuf.message import Message as ProtoMessage
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection_pb2
from llmgateway.v1 import completion_service_pb2 as pb

FORBIDDEN = frozenset({grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN})
"""A status no input may cause: each failure has its own status (issue #12)."""
_MAX_STREAM_MESSAGES = 200
_MAX_DEPTH = 4
_FD = descriptor.FieldDescriptor


@dataclass(frozen=True, slots=True)
class Method:
    path: str
    request: type[ProtoMessage]
    server_streaming: bool
    client_streaming: bool = False

    @property
    def name(self) -> str:
        return self.path.rsplit("/", 1)[1]


def methods() -> list[Method]:
    """Every RPC the gateway serves: the contract's, health's and reflection's."""
    found: list[Method] = []
    for service in (
        pb.DESCRIPTOR.services_by_name["CompletionService"],
        health_pb2.DESCRIPTOR.services_by_name["Health"],
        reflection_pb2.DESCRIPTOR.services_by_name["ServerReflection"],
    ):
        for method in service.methods:
            found.append(
                Method(
                    f"/{service.full_name}/{method.name}",
                    message_factory.GetMessageClass(cast(descriptor.Descriptor, method.input_type)),
                    method.server_streaming,
                    method.client_streaming,
                )
            )
    return found


@dataclass(frozen=True, slots=True)
class Case:
    method: Method
    mode: str
    payload: bytes
    metadata: tuple[tuple[str, str | bytes], ...]
    timeout_s: float
    where: str
    """seed/worker/index: enough to generate the same case again."""


_SAFE_DIRECTIVES = (
    "[[sim:tokens=3]]",
    "[[sim:error=400]]",
    "[[sim:error=402]]",
    "[[sim:error=404]]",
    "[[sim:error=500]]",
    "[[sim:error=502]]",
    "[[sim:error=new-shape]]",
    "[[sim:malformed]]",
    "[[sim:bad-content-type]]",
    "[[sim:drop-after=2]]",
    "[[sim:choice-error]]",
    "[[sim:mid-stream-error]]",
    "[[sim:json=invalid]]",
    "[[sim:json=fenced]]",
    "[[sim:tool-call]]",
    "[[sim:reasoning]]",
    "[[sim:usage-shape=none]]",
    "[[sim:no-finish]]",
    "[[sim:crlf]]",
)
_MODELS = (
    "openai/gpt-4o-mini",
    "anthropic/claude-3.5-haiku",
    "meta-llama/llama-3.1-8b-instruct",
    "openai/gpt-4o-mini:nitro",
    "no/such-model",
    "*",
    "",
)
_TEXT_ALPHABETS = (
    "abcdefghijklmnopqrstuvwxyz ",
    "予算を守るための見積もりです데이터베이스😀👍🏽🚀",
    "\x00\x01\x1f\x7f\r\n\t\u200b\u202e\ufeff\ufffd",
    '{}[]":,\\/<>&%$#@!`~',
    "ǅﬁ\u0958\ufdfa\u0301\u0323",
)
_INTS = (0, 1, -1, 2, 7, 255, 256, 2**31 - 1, -(2**31), 2**32 - 1, 2**63 - 1, -(2**63))
_FLOATS = (0.0, -0.0, 0.5, 1.0, 2.0, -1.0, 1e308, -1e308, 5e-324, math.nan, math.inf, -math.inf)
_INT_RANGES: dict[int, tuple[int, int]] = {
    _FD.TYPE_INT32: (-(2**31), 2**31 - 1),
    _FD.TYPE_SINT32: (-(2**31), 2**31 - 1),
    _FD.TYPE_SFIXED32: (-(2**31), 2**31 - 1),
    _FD.TYPE_INT64: (-(2**63), 2**63 - 1),
    _FD.TYPE_SINT64: (-(2**63), 2**63 - 1),
    _FD.TYPE_SFIXED64: (-(2**63), 2**63 - 1),
    _FD.TYPE_UINT32: (0, 2**32 - 1),
    _FD.TYPE_FIXED32: (0, 2**32 - 1),
    _FD.TYPE_UINT64: (0, 2**64 - 1),
    _FD.TYPE_FIXED64: (0, 2**64 - 1),
}


class Fuzzer:
    """Makes cases from one seeded random stream; the same seed makes the same cases."""

    def __init__(self, seed: int, *, caller_key: str, where: str = "") -> None:
        self.rng = random.Random(seed)
        self.caller_key = caller_key
        self.where = where
        self.methods = methods()
        self._count = 0

    def case(self) -> Case:
        rng = self.rng
        method = rng.choice(self.methods)
        mode = rng.choices(
            ("plausible", "structured", "mutated", "random", "wire", "empty"),
            weights=(25, 35, 15, 10, 10, 5),
        )[0]
        if mode == "plausible":
            payload = self.plausible(method.request).SerializeToString()
        elif mode == "structured":
            payload = self.message(method.request).SerializeToString()
        elif mode == "mutated":
            payload = self.mutate(self.message(method.request).SerializeToString())
        elif mode == "random":
            payload = rng.randbytes(self.size())
        elif mode == "wire":
            payload = self.wire()
        else:
            payload = b""
        self._count += 1
        # Watch never ends by itself: a short deadline keeps it from holding a worker. A bidi
        # call gets no 50 ms deadline: when it expires during the client's send, the grpc
        # client reports its own INTERNAL ("execute_batch" failed), not the server's status.
        timeout = rng.choice((0.05, 1.0, 3.0, 3.0, 3.0))
        if method.name == "Watch":
            timeout = 0.2
        elif method.client_streaming:
            timeout = max(timeout, 1.0)
        return Case(method, mode, payload, self.metadata(), timeout, f"{self.where}#{self._count}")

    # --- sizes, strings, numbers ---------------------------------------------------------

    def size(self) -> int:
        rng = self.rng
        return rng.choices(
            (rng.randint(0, 16), rng.randint(0, 512), rng.randint(0, 8192), rng.randint(0, 2**18)),
            weights=(30, 40, 25, 5),
        )[0]

    def text(self) -> str:
        rng = self.rng
        roll = rng.random()
        if roll < 0.15:
            return rng.choice(_MODELS)
        if roll < 0.25:
            return rng.choice(_SAFE_DIRECTIVES)
        if roll < 0.30:
            return ""
        alphabet = rng.choice(_TEXT_ALPHABETS)
        length = min(self.size(), 50_000)
        text = "".join(rng.choice(alphabet) for _ in range(min(length, 300)))
        if length > 300:
            text = (text * (length // max(len(text), 1) + 1))[:length]
        if rng.random() < 0.2:
            text += " " + rng.choice(_SAFE_DIRECTIVES)
        return text

    def integer(self, kind: int) -> int:
        low, high = _INT_RANGES.get(kind, (-(2**31), 2**31 - 1))
        value = self.rng.choice(_INTS) if self.rng.random() < 0.6 else self.rng.randint(low, high)
        return min(max(value, low), high)

    # --- structured messages ---------------------------------------------------------------

    def plausible(self, kind: type[ProtoMessage]) -> ProtoMessage:
        """A request that would succeed, with one or two fields set to random values: it gets
        past decoding and validation far more often than a random message does."""
        message: Any = kind()
        names = message.DESCRIPTOR.fields_by_name
        if "messages" in names:
            message.messages.add(role=pb.ROLE_USER, content="Hi [[sim:tokens=3]]")
        if "schema_name" in names:
            message.schema_name = "chat_reply_v1"
        fields: list[descriptor.FieldDescriptor] = list(message.DESCRIPTOR.fields)
        for _ in range(self.rng.randint(0, 2)):
            if fields:
                fd = self.rng.choice(fields)
                if fd.containing_oneof is None or self.rng.random() < 0.5:
                    self.field(message, fd, 2)
        result: ProtoMessage = message
        return result

    def message(self, kind: type[ProtoMessage], depth: int = 0) -> ProtoMessage:
        message = kind()
        self.fill(message, depth)
        return message

    def fill(self, message: ProtoMessage, depth: int) -> None:
        rng = self.rng
        desc = message.DESCRIPTOR
        full_name = desc.full_name
        if full_name == "google.protobuf.Timestamp" or full_name == "google.protobuf.Duration":
            message.seconds = self.integer(_FD.TYPE_INT64)  # type: ignore[attr-defined]
            message.nanos = self.integer(_FD.TYPE_INT32)  # type: ignore[attr-defined]
            return
        if full_name == "google.protobuf.Struct":
            self.struct(message, depth)
            return
        if full_name == "google.protobuf.Value":
            self.value(message, depth)
            return
        chosen_oneofs = {
            oneof.name: rng.choice(oneof.fields) for oneof in desc.oneofs if rng.random() < 0.8
        }
        for fd in desc.fields:
            oneof = fd.containing_oneof
            if oneof is not None and not oneof.name.startswith("_"):
                if chosen_oneofs.get(oneof.name) is not fd:
                    continue
            elif rng.random() < 0.4:
                continue
            self.field(message, cast(descriptor.FieldDescriptor, fd), depth)

    def field(self, message: ProtoMessage, fd: descriptor.FieldDescriptor, depth: int) -> None:
        rng = self.rng
        if fd.message_type is not None and fd.message_type.GetOptions().map_entry:
            target = getattr(message, fd.name)
            key_fd, value_fd = (
                fd.message_type.fields_by_name["key"],
                fd.message_type.fields_by_name["value"],
            )
            for _ in range(rng.randint(0, 3)):
                key = self.scalar(key_fd)
                if value_fd.message_type is not None:
                    if depth < _MAX_DEPTH:
                        self.fill(target[key], depth + 1)
                else:
                    target[key] = self.scalar(value_fd)
            return
        repeated = fd.is_repeated
        count = rng.choice((0, 1, 1, 2, 3, 40)) if repeated else 1
        if fd.message_type is not None:
            if depth >= _MAX_DEPTH:
                return
            if repeated:
                container = getattr(message, fd.name)
                for _ in range(count):
                    self.fill(container.add(), depth + 1)
            else:
                sub = getattr(message, fd.name)
                sub.SetInParent()
                self.fill(sub, depth + 1)
            return
        if repeated:
            getattr(message, fd.name).extend(self.scalar(fd) for _ in range(count))
        else:
            setattr(message, fd.name, self.scalar(fd))

    def scalar(self, fd: descriptor.FieldDescriptor) -> Any:
        rng = self.rng
        kind = fd.type
        if kind == _FD.TYPE_STRING:
            return self.text()
        if kind == _FD.TYPE_BYTES:
            return rng.randbytes(min(self.size(), 2**17))
        if kind == _FD.TYPE_BOOL:
            return rng.random() < 0.5
        if kind in (_FD.TYPE_FLOAT, _FD.TYPE_DOUBLE):
            value = rng.choice(_FLOATS) if rng.random() < 0.7 else rng.uniform(-10, 10)
            if kind == _FD.TYPE_FLOAT and math.isfinite(value) and abs(value) > 3e38:
                value = math.copysign(math.inf, value)
            return value
        if kind == _FD.TYPE_ENUM:
            assert fd.enum_type is not None
            values = [v.number for v in fd.enum_type.values]
            return rng.choice(values) if rng.random() < 0.8 else self.integer(_FD.TYPE_INT32)
        return self.integer(kind)

    def struct(self, message: Any, depth: int) -> None:
        for _ in range(self.rng.randint(0, 4)):
            self.value(message.fields[self.text()[:40]], depth + 1)

    def value(self, message: Any, depth: int) -> None:
        rng = self.rng
        kind = rng.choice(("null", "number", "string", "bool", "struct", "list"))
        if depth >= _MAX_DEPTH and kind in ("struct", "list"):
            kind = "string"
        if kind == "null":
            message.null_value = 0
        elif kind == "number":
            message.number_value = rng.choice(_FLOATS)
        elif kind == "string":
            message.string_value = self.text()
        elif kind == "bool":
            message.bool_value = rng.random() < 0.5
        elif kind == "struct":
            message.struct_value.SetInParent()
            self.struct(message.struct_value, depth + 1)
        else:
            message.list_value.SetInParent()
            for _ in range(rng.randint(0, 3)):
                self.value(message.list_value.values.add(), depth + 1)

    # --- bytes that are not (quite) protobuf -----------------------------------------------

    def mutate(self, data: bytes) -> bytes:
        rng = self.rng
        buffer = bytearray(data)
        for _ in range(rng.randint(1, 8)):
            action = rng.choice(("flip", "cut", "insert", "duplicate"))
            if action == "flip" and buffer:
                i = rng.randrange(len(buffer))
                buffer[i] ^= 1 << rng.randrange(8)
            elif action == "cut" and buffer:
                del buffer[rng.randrange(len(buffer)) :]
            elif action == "insert":
                i = rng.randint(0, len(buffer))
                buffer[i:i] = rng.randbytes(rng.randint(1, 16))
            elif action == "duplicate" and buffer:
                i = rng.randrange(len(buffer))
                buffer[i:i] = buffer[i : i + rng.randint(1, 64)]
        return bytes(buffer)

    def wire(self) -> bytes:
        """Protobuf-shaped garbage: plausible tags with wrong wire types, lengths past the end,
        groups (not allowed in proto3), overlong varints, field numbers 0 and 2**29-1."""
        rng = self.rng
        out = bytearray()
        for _ in range(rng.randint(1, 12)):
            number = rng.choice((0, 1, 2, 3, 5, 8, 15, 16, 100, 2**29 - 1, rng.randint(1, 40)))
            wire_type = rng.randint(0, 7)
            out += _varint((number << 3) | wire_type)
            if wire_type == 0:
                out += (
                    _varint(rng.choice((0, 1, 2**63, 2**64 - 1)))
                    if rng.random() < 0.9
                    else b"\xff" * 11
                )
            elif wire_type == 2:
                length = rng.choice((0, 1, 5, 2**31, 2**62, rng.randint(0, 64)))
                out += _varint(length) + rng.randbytes(min(length, rng.randint(0, 64)))
            elif wire_type in (1, 5):
                out += rng.randbytes(8 if wire_type == 1 else 4)
        return bytes(out)

    # --- metadata ----------------------------------------------------------------------------

    def metadata(self) -> tuple[tuple[str, str | bytes], ...]:
        rng = self.rng
        items: list[tuple[str, str | bytes]] = []
        roll = rng.random()
        good = f"Bearer {self.caller_key}"
        if roll < 0.8:
            items.append(("authorization", good))
        elif roll < 0.84:
            items += [("authorization", good), ("authorization", good)]
        elif roll < 0.88:
            items.append(("authorization", "Bearer wrong-" + self.ascii(rng.randint(0, 64))))
        elif roll < 0.92:
            items.append(("authorization", self.ascii(rng.choice((0, 5, 300, 9000)))))
        elif roll < 0.95:
            items.append(
                (
                    "authorization",
                    rng.choice(("bearer", "Basic x", "Bearer  " + self.caller_key, good + " ")),
                )
            )
        if rng.random() < 0.3:
            items.append(("x-request-id", self.ascii(rng.choice((0, 8, 36, 129, 5000)))))
        if rng.random() < 0.3:
            items.append(
                (
                    "traceparent",
                    rng.choice(
                        (self.ascii(55), "00-" + "f" * 32 + "-" + "0" * 16 + "-01", "zz", "")
                    ),
                )
            )
        if rng.random() < 0.15:
            items.append(("tracestate", self.ascii(rng.choice((0, 10, 600)))))
        if rng.random() < 0.1:
            items.append(("x-fuzz-bin", rng.randbytes(rng.randint(0, 300))))
        if rng.random() < 0.05:
            items.append(("grpc-trace-bin", rng.randbytes(rng.randint(0, 40))))
        return tuple(items)

    def ascii(self, length: int) -> str:
        # Printable ASCII only: the client library itself refuses anything else in a header.
        return "".join(chr(self.rng.randint(0x20, 0x7E)) for _ in range(length))


def _varint(value: int) -> bytes:
    out = bytearray()
    value &= 2**64 - 1
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


@dataclass(frozen=True, slots=True)
class Finding:
    case: Case
    code: grpc.StatusCode
    details: str

    def __str__(self) -> str:
        payload = self.case.payload
        return (
            f"{self.case.where} {self.case.method.name} ({self.case.mode}, {len(payload)} bytes "
            f"{payload[:48].hex()}…, metadata keys {[k for k, _ in self.case.metadata]}, "
            f"deadline {self.case.timeout_s} s): "
            f"{self.code.name} {self.details[:200]!r}"
        )


@dataclass
class Report:
    calls: int = 0
    codes: Counter[tuple[str, str]] = field(default_factory=Counter)
    """(method, status) -> calls."""
    findings: list[Finding] = field(default_factory=list)

    def summary(self) -> str:
        lines = [f"{self.calls} calls"]
        by_method: dict[str, list[str]] = {}
        for (method, code), count in sorted(self.codes.items()):
            by_method.setdefault(method, []).append(f"{code} {count}")
        lines += [f"  {method}: {', '.join(codes)}" for method, codes in by_method.items()]
        lines += [f"  FINDING {finding}" for finding in self.findings[:20]]
        if len(self.findings) > 20:
            lines.append(f"  … and {len(self.findings) - 20} more findings")
        return "\n".join(lines)


async def call(channel: grpc.aio.Channel, case: Case) -> tuple[grpc.StatusCode, str]:
    """One case through a generic call with identity serializers: the bytes go as they are."""
    method = case.method
    metadata = grpc.aio.Metadata(*case.metadata)
    try:
        if method.client_streaming:
            bidi = channel.stream_stream(method.path, _same, _same)(
                metadata=metadata, timeout=case.timeout_s
            )
            # Written by hand, and a failed write ignored: the server may end the call before
            # the client has finished sending (it answers bad bytes at once), and then gRPC's
            # request-iterator task reports a client-side INTERNAL ("execute_batch" failed,
            # grpc/grpc#36066) in place of the status the server sent.
            with contextlib.suppress(grpc.aio.AioRpcError):
                await bidi.write(case.payload)
                await bidi.done_writing()
            await _drain(bidi)
        elif method.server_streaming:
            stream = channel.unary_stream(method.path, _same, _same)
            await _drain(stream(case.payload, metadata=metadata, timeout=case.timeout_s))
        else:
            unary = channel.unary_unary(method.path, _same, _same)
            await unary(case.payload, metadata=metadata, timeout=case.timeout_s)
    except grpc.aio.AioRpcError as exc:
        return exc.code(), f"{exc.details() or ''} | {(exc.debug_error_string() or '')[:300]}"
    return grpc.StatusCode.OK, ""


def _same(data: bytes) -> bytes:
    # Identity (de)serializers: the bytes go out, and come back, untouched.
    return data


async def _drain(call: Any) -> None:
    read = 0
    async for _ in call:
        read += 1
        if read >= _MAX_STREAM_MESSAGES:
            call.cancel()
            return


async def fuzz(
    address: str,
    *,
    seconds: float,
    seed: int,
    caller_key: str,
    workers: int = 8,
    on_case: Callable[[Case], None] | None = None,
) -> Report:
    """Cases from ``workers`` seeded streams against ``address`` for ``seconds``."""
    report = Report()
    stop_at = time.monotonic() + seconds
    options = [
        ("grpc.max_send_message_length", 64 * 2**20),
        ("grpc.max_receive_message_length", 64 * 2**20),
    ]

    async def worker(number: int, channel: grpc.aio.Channel) -> None:
        fuzzer = Fuzzer(
            seed * 1000 + number, caller_key=caller_key, where=f"seed {seed} worker {number}"
        )
        while time.monotonic() < stop_at:
            case = fuzzer.case()
            if on_case is not None:
                on_case(case)
            code, details = await call(channel, case)
            report.calls += 1
            report.codes[(case.method.name, code.name)] += 1
            if code in FORBIDDEN:
                report.findings.append(Finding(case, code, details))

    async with grpc.aio.insecure_channel(address, options=options) as channel:
        await asyncio.gather(*(worker(n, channel) for n in range(workers)))
    return report


def covered(report: Report) -> set[str]:
    return {method for method, _ in report.codes}


def all_method_names(found: Iterable[Method] | None = None) -> set[str]:
    return {m.name for m in (found if found is not None else methods())}
