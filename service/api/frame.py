"""The one frame every RPC runs in, unary and streaming alike.

``CallFrame.run`` is the whole life of an RPC: read the metadata (once, bounded), open the
call's ``CallRecord`` and telemetry, authenticate, refuse while draining, parse the request
bytes, run the handler, then end the call with its status and account it exactly once,
whatever ended it: an answer, a ``GatewayError``, a bug, the caller's cancel or deadline, or
the gateway cutting it at shutdown.

The frame never raises to end a failed call. It sets the status, details and trailers on the
context and returns, and gRPC sends them when the handler returns. ``context.abort`` would
raise an exception whose traceback holds the handler's frames (and so the request) in a
reference cycle until the garbage collector runs: a flood of rejected 8 MB requests then held
gigabytes. Only a cancellation propagates, because gRPC expects it to.

Requests arrive as bytes (the methods are registered without a request deserializer) and are
parsed here, after authentication: undecodable bytes become INVALID_ARGUMENT with ErrorInfo
like any other bad input, and a stranger's request is never parsed at all. Answers leave as
bytes too (no response serializer): each is serialized here (``Call.encode``) and checked
against the gRPC send limit first, so an answer too large to send ends RESOURCE_EXHAUSTED /
``RESPONSE_TOO_LARGE`` with ErrorInfo and a row saying so, where gRPC would fail the call
with a bare status after the ledger had booked it OK.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import TypeVar

import grpc
from google.protobuf.message import Message

from service.api.auth import Authenticator
from service.api.status import internal_status, status_code_for, to_rpc_status
from service.domain.accounting import Accountant, CallRecord
from service.domain.callers import Caller
from service.errors import (
    GatewayError,
    InvalidRequestError,
    Reason,
    ResponseTooLargeError,
    ServiceUnavailableError,
    UpstreamAuthError,
)
from service.telemetry.core import TRACEPARENT, TRACESTATE
from service.telemetry.rpc import RpcCall, RpcTelemetry

log = logging.getLogger(__name__)

Request = TypeVar("Request")
Response = TypeVar("Response")
Context = grpc.aio.ServicerContext[bytes, Response]
FinishHook = Callable[[CallRecord, grpc.StatusCode], None]

REQUEST_ID_KEY = "x-request-id"
# Where grpcio-status clients (rpc_status.from_call) look for the rich status.
GRPC_DETAILS_KEY = "grpc-status-details-bin"
MAX_REQUEST_ID_CHARS = 128
"""A longer ``x-request-id`` is ignored (one is generated), never stored or echoed."""
# The gateway gives up this much before the caller's deadline (at most), so the caller gets
# the gateway's DEADLINE_EXCEEDED with its ErrorInfo and the ledger records it, rather than a
# bare status from the caller's own timer racing ours.
DEADLINE_MARGIN_S = 0.05
RETRY_ELSEWHERE_S = 1.0
"""RetryInfo of a call refused or cut because this replica is shutting down."""


@dataclass(slots=True)
class Incoming:
    """What the frame needs from the call's metadata, read in one pass."""

    request_id: str | None = None
    authorization: str | None = None
    repeated_authorization: bool = False
    traceparent: str | None = None
    tracestate: str | None = None


def scan_metadata(metadata: Iterable[tuple[str, str | bytes]] | None) -> Incoming:
    incoming = Incoming()
    for key, value in metadata or ():
        if not isinstance(value, str):
            continue
        if key == "authorization":
            incoming.repeated_authorization = incoming.authorization is not None
            incoming.authorization = value
        elif key == REQUEST_ID_KEY:
            # Printable ASCII only: it is echoed in trailers and written to logs and rows.
            if (
                incoming.request_id is None
                and 0 < len(value) <= MAX_REQUEST_ID_CHARS
                and value.isascii()
                and value.isprintable()
            ):
                incoming.request_id = value
        elif key == TRACEPARENT:
            incoming.traceparent = value
        elif key == TRACESTATE:
            incoming.tracestate = value
    return incoming


def peer_host(peer: str) -> str:
    """The address part of gRPC's ``ipv4:1.2.3.4:5678`` / ``ipv6:[::1]:5678`` (no port: one
    client opens many connections, and a rejected-call count per port would not aggregate)."""
    kind, _, rest = peer.partition(":")
    if kind == "ipv4":
        return rest.rpartition(":")[0][:64]
    if kind == "ipv6":
        return rest.rpartition(":")[0].strip("[]")[:64]
    return kind[:16]


@dataclass(slots=True)
class Call:
    """What a handler gets besides its request: who calls, what is recorded, and by when."""

    caller: Caller
    record: CallRecord
    observed: RpcCall
    deadline: float
    """When the gateway gives up, on the loop clock: the caller's deadline less a margin, or
    infinity when it set none (the upstream client then applies OPENROUTER_TIMEOUT_MS)."""
    max_send_bytes: int | None = None
    """gRPC's send limit (``grpc.max_send_message_length``); None: no limit."""

    def encode(self, message: Message) -> bytes:
        """``message`` serialized, once it is known to fit the send limit: an answer or a
        stream message over it raises ``ResponseTooLargeError`` (the call's row then says
        RESOURCE_EXHAUSTED, with the tokens and cost already billed upstream)."""
        payload = message.SerializeToString()
        if self.max_send_bytes is not None and len(payload) > self.max_send_bytes:
            # A stream cut here may not have its usage yet: its row asks for reconciliation.
            self.record.interrupted = True
            raise ResponseTooLargeError(len(payload), self.max_send_bytes)
        return payload


@dataclass(slots=True)
class _Running:
    record: CallRecord
    cut: bool = False
    """Set when shutdown cancels the call: it ends UNAVAILABLE, not CANCELLED."""


class CallFrame:
    """Runs RPCs (``run``), counts the ones in flight, drains and cuts them at shutdown."""

    def __init__(
        self,
        authenticator: Authenticator,
        accountant: Accountant,
        telemetry: RpcTelemetry,
        *,
        on_finish: FinishHook | None = None,
        max_send_bytes: int | None = None,
    ) -> None:
        self._auth = authenticator
        self._max_send_bytes = max_send_bytes
        self._accountant = accountant
        self._telemetry = telemetry
        self._on_finish = on_finish
        self._draining = False
        self._running: dict[asyncio.Task[object], _Running] = {}
        self._in_flight = 0
        """Calls begun and not yet accounted (a successful call is accounted after its
        answer, so this can exceed ``len(_running)``)."""
        self._idle = asyncio.Event()
        self._idle.set()

    # --- shutdown --------------------------------------------------------------------------

    async def drain(self, grace_s: float) -> bool:
        """Refuse new calls with UNAVAILABLE (a status clients may retry elsewhere) and wait
        up to ``grace_s`` for the calls in flight; True when none is left."""
        self._draining = True
        return await self._wait_idle(grace_s)

    async def cut(self, timeout_s: float = 5.0) -> int:
        """End every call still running with UNAVAILABLE / ``SERVICE_UNAVAILABLE`` (ErrorInfo
        and RetryInfo), closing its upstream request, and wait (up to ``timeout_s``) until
        each is accounted; returns how many were cut."""
        self._draining = True
        running = list(self._running.items())
        for task, call in running:
            call.cut = True
            task.cancel()
        await self._wait_idle(timeout_s)
        return len(running)

    async def _wait_idle(self, timeout_s: float) -> bool:
        try:
            async with asyncio.timeout(timeout_s):
                await self._idle.wait()
        except TimeoutError:
            return False
        return True

    # --- the frame -------------------------------------------------------------------------

    async def run(
        self,
        rpc: str,
        raw: bytes,
        context: Context[Response],
        parse: Callable[[bytes], Request],
        handler: Callable[[Call, Request, Context[Response]], Awaitable[Message | None]],
    ) -> bytes | None:
        """Run one RPC; the handler's answer, serialized (None for a stream, whose handler
        writes its messages, or when the call failed, its status set)."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        incoming = scan_metadata(context.invocation_metadata())
        # The row's key is the gateway's own: os.urandom(16).hex() is as unique as uuid4().hex
        # at a fifth of its cost. A caller's x-request-id is only recorded beside it.
        call_id = os.urandom(16).hex()
        record = CallRecord(
            call_id=call_id,
            request_id=incoming.request_id or call_id,
            rpc=rpc,
            started_at=started,
        )
        context.set_trailing_metadata(((REQUEST_ID_KEY, record.request_id),))
        observed = self._telemetry.start(
            rpc, record.request_id, incoming.traceparent, incoming.tracestate
        )
        deadline = _deadline(context, started)
        task = asyncio.current_task()
        assert task is not None  # gRPC runs every handler in a task of its own
        running = self._running[task] = _Running(record)
        self._in_flight += 1
        self._idle.clear()
        try:
            caller = self._authenticate(context, record, incoming)
            self._check_open()
            request = _parse(parse, raw)
            call = Call(caller, record, observed, deadline, self._max_send_bytes)
            answer = await handler(call, request, context)
            payload = None if answer is None else call.encode(answer)
        except GatewayError as error:
            del self._running[task]
            await self._fail(context, record, observed, error)
            return None
        except asyncio.CancelledError:
            del self._running[task]
            if not running.cut:
                # The caller cancelled, or its deadline passed: nobody is left to answer.
                late = loop.time() >= deadline
                code = grpc.StatusCode.DEADLINE_EXCEEDED if late else grpc.StatusCode.CANCELLED
                record.interrupted = True
                self._account(record, observed, code, loop.time(), wait=False)
                raise
            task.uncancel()
            record.interrupted = True
            await self._fail(
                context,
                record,
                observed,
                ServiceUnavailableError(
                    "the gateway is shutting down and ended this call; retry it",
                    metadata={"cause": "shutdown"},
                    retry_after_s=RETRY_ELSEWHERE_S,
                ),
            )
            return None
        except Exception as error:
            del self._running[task]
            await self._crash(context, record, observed, error)
            return None
        del self._running[task]
        await self._succeed(record, observed)
        return payload

    def _authenticate(
        self, context: Context[Response], record: CallRecord, incoming: Incoming
    ) -> Caller:
        caller = self._auth.authenticate(
            incoming.authorization,
            lambda: context.auth_context().get("x509_common_name"),
            repeated=incoming.repeated_authorization,
        )
        record.caller_id = caller.id
        return caller

    def _check_open(self) -> None:
        # After authentication, so a refused call is accounted to its caller.
        if self._draining:
            raise ServiceUnavailableError(
                "the gateway is shutting down; retry the call",
                metadata={"cause": "draining"},
                retry_after_s=RETRY_ELSEWHERE_S,
            )

    # --- ending a call ---------------------------------------------------------------------

    async def _fail(
        self,
        context: Context[Response],
        record: CallRecord,
        observed: RpcCall,
        error: GatewayError,
    ) -> None:
        observed.error_type = record.reason = error.reason
        if error.reason is Reason.POLICY_VIOLATION:
            record.refused_rule = error.metadata.get("rule", "")
            record.refused_field = error.metadata.get("field", "")
        if not record.caller_id:
            record.peer = peer_host(context.peer())
        if isinstance(error, UpstreamAuthError):
            # The gateway's own OpenRouter key is wrong: the operator must act, loudly.
            log.error(
                "OpenRouter rejected the gateway's API key; check OPENROUTER_API_KEY",
                extra={"request_id": record.request_id, "reason": error.reason},
            )
        code = status_code_for(error)
        self._set_status(context, record, code, to_rpc_status(error, request_id=record.request_id))
        # Accounted before the status goes out (it leaves when the handler returns): a caller
        # that reads GetUsage right after an error finds the failed call's row.
        await self._account_durably(record, observed, code)

    async def _crash(
        self, context: Context[Response], record: CallRecord, observed: RpcCall, error: Exception
    ) -> None:
        observed.error_type = type(error).__name__
        record.reason = "INTERNAL"
        if not record.caller_id:
            record.peer = peer_host(context.peer())
        log.exception("unexpected error", extra={"request_id": record.request_id})
        code = grpc.StatusCode.INTERNAL
        self._set_status(context, record, code, internal_status(record.request_id))
        await self._account_durably(record, observed, code)

    @staticmethod
    def _set_status(
        context: Context[Response],
        record: CallRecord,
        code: grpc.StatusCode,
        status: object,
    ) -> None:
        serialized = status.SerializeToString()  # type: ignore[attr-defined]
        context.set_code(code)
        context.set_details(status.message)  # type: ignore[attr-defined]
        context.set_trailing_metadata(
            ((REQUEST_ID_KEY, record.request_id), (GRPC_DETAILS_KEY, serialized))
        )

    async def _succeed(self, record: CallRecord, observed: RpcCall) -> None:
        if self._accountant.durable:
            # The answer is released only once its row is committed (group commit: calls
            # finishing together share one transaction).
            await self._account_durably(record, observed, grpc.StatusCode.OK)
        else:
            self._account_after_answer(record, observed)

    async def _account_durably(
        self, record: CallRecord, observed: RpcCall, code: grpc.StatusCode
    ) -> None:
        committed = self._account(record, observed, code, asyncio.get_running_loop().time())
        if committed is not None:
            try:
                await committed
            except Exception:
                # The ledger closed before the row was written (past its close timeout):
                # the store has logged and counted the loss; the caller still gets its status.
                log.exception(
                    "a call's row was not committed", extra={"request_id": record.request_id}
                )

    def _account(
        self,
        record: CallRecord,
        observed: RpcCall,
        code: grpc.StatusCode,
        ended_at: float,
        *,
        wait: bool = True,
    ) -> Awaitable[None] | None:
        """The ledger row, the span's end, the metrics and the log line of a finished RPC, and
        it leaves the calls in flight. Returns what to await for the row to be committed
        (durable ledger only)."""
        if record.finished:
            return None
        record.finished = True
        try:
            committed = self._accountant.finish(record, code.name, ended_at, wait=wait)
            observed.end(record, code, ended_at)
            if self._on_finish is not None:
                self._on_finish(record, code)
        finally:
            self._leave()
        return committed

    def _account_after_answer(self, record: CallRecord, observed: RpcCall) -> None:
        """Account a successful RPC once its answer is on its way.

        The bookkeeping (~0.3 ms of CPU with tracing on) is no part of the answer, so the
        caller does not wait for it: it runs as the next loop callback, after gRPC has taken
        the response. A caller cannot observe the difference: its next RPC (a GetUsage, say)
        is read by a later loop iteration, after this callback. The call stays in flight until
        then, so a drain cannot close the ledger before its row.
        """
        ended_at = asyncio.get_running_loop().time()

        def account() -> None:
            try:
                self._account(record, observed, grpc.StatusCode.OK, ended_at)
            except Exception:
                log.exception(
                    "accounting a finished call failed", extra={"request_id": record.request_id}
                )

        asyncio.get_running_loop().call_soon(account)

    def _leave(self) -> None:
        self._in_flight -= 1
        if self._in_flight == 0:
            self._idle.set()


def _deadline(context: Context[Response], now: float) -> float:
    remaining: float | None = context.time_remaining()
    if remaining is None:
        return math.inf
    return now + remaining - min(DEADLINE_MARGIN_S, remaining * 0.1)


def _parse(parse: Callable[[bytes], Request], raw: bytes) -> Request:
    try:
        return parse(raw)
    except Exception:
        # DecodeError for most damage; anything else the parser raises is about the bytes too.
        raise InvalidRequestError(
            "the request is not a valid protocol buffers message of this method's type",
            metadata={"cause": "undecodable"},
        ) from None


def unary_method(
    frame: CallFrame,
    rpc: str,
    parse: Callable[[bytes], Request],
    handler: Callable[[Call, Request, Context[bytes]], Awaitable[Message | None]],
) -> Callable[[bytes, Context[bytes]], Awaitable[bytes | None]]:
    """The method gRPC calls for a unary RPC: ``frame.run`` it, then hand gRPC its answer or —
    when the call failed (``run`` returned None, the status set) — an abort.

    Returning None with a status set makes grpc.aio send headers and an empty message before
    the status; a client's retry policy sees the headers and commits, so it never retries. An
    abort sends a Trailers-Only response, which a client retries when its policy names the code
    (the recommended one retries UNAVAILABLE). The abort's traceback is a cycle that lives until
    the next collection and holds this method's frame, so the request bytes are dropped first;
    a stranger's UNAUTHENTICATED — the one failure a flood can repeat at no cost — keeps the
    cheaper path: no client retries it.
    """

    async def method(raw: bytes, context: Context[bytes]) -> bytes | None:
        answer = await frame.run(rpc, raw, context, parse, handler)
        del raw  # the abort's traceback must not hold the request
        if answer is not None:
            return answer
        code = context.code()
        if code is None or code == grpc.StatusCode.UNAUTHENTICATED:
            return None
        await context.abort(code, context.details() or "")
        return None  # not reached: abort raises

    method.__name__ = method.__qualname__ = rpc
    return method
