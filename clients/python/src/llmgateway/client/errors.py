"""Typed access to the rich error details every gateway error carries.

The gateway sends a ``google.rpc.Status`` in the ``grpc-status-details-bin`` trailer with an
``ErrorInfo`` and, where they apply, ``RetryInfo``, ``BadRequest`` and ``QuotaFailure``. They are
returned here as plain frozen dataclasses: googleapis-common-protos ships no type information
(no ``py.typed``), so its message classes would be ``Any`` to a caller's ``mypy --strict``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from types import MappingProxyType
from typing import TypeVar, cast

import grpc
from google.protobuf.message import Message
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

_M = TypeVar("_M", bound=Message)

DOMAIN = "llmgateway.v1"


@dataclass(frozen=True, slots=True)
class ErrorInfo:
    """Why the call failed: ``reason`` is UPPER_SNAKE (see the README's error table)."""

    reason: str
    domain: str
    metadata: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))


@dataclass(frozen=True, slots=True)
class RetryInfo:
    """How long to wait before the same call may succeed."""

    retry_delay: timedelta


@dataclass(frozen=True, slots=True)
class FieldViolation:
    """One wrong field of the request, named by its path (``messages[0].content``)."""

    field: str
    description: str
    reason: str = ""


@dataclass(frozen=True, slots=True)
class BadRequest:
    """Which fields of the request are wrong."""

    field_violations: tuple[FieldViolation, ...]


@dataclass(frozen=True, slots=True)
class QuotaViolation:
    """One limit that ran out: ``subject`` names it (``caller:alpha``), ``description`` says how."""

    subject: str
    description: str


@dataclass(frozen=True, slots=True)
class QuotaFailure:
    """Which of the caller's limits ran out."""

    violations: tuple[QuotaViolation, ...]


@dataclass(frozen=True, slots=True)
class ErrorDetails:
    """A failed call's code and message with the details the gateway attached."""

    code: grpc.StatusCode
    message: str
    error_info: ErrorInfo | None = None
    retry_info: RetryInfo | None = None
    bad_request: BadRequest | None = None
    quota_failure: QuotaFailure | None = None

    @property
    def reason(self) -> str:
        """The ErrorInfo reason, or "" when the error did not come from the gateway."""
        return self.error_info.reason if self.error_info else ""

    @property
    def request_id(self) -> str:
        """The id the gateway logged and accounted the call under ("" when not known)."""
        return self.error_info.metadata.get("request_id", "") if self.error_info else ""


def error_details(error: grpc.RpcError) -> ErrorDetails:
    """The details of a failed call, sync (``grpc.RpcError``) or async (``grpc.aio.AioRpcError``).

    An error without a status trailer (a proxy's or the transport's own, e.g. UNAVAILABLE before
    any connection) yields only its code and message.
    """
    code, message = _code_and_message(error)
    try:
        # Both kinds of error offer code(), details() and trailing_metadata(), all from_call reads.
        status = rpc_status.from_call(cast(grpc.Call, error))
    except ValueError:  # a trailer that contradicts the call's code or message: not trusted
        status = None
    if status is None:
        return ErrorDetails(code=code, message=message)
    info = _unpack(status, error_details_pb2.ErrorInfo)
    retry = _unpack(status, error_details_pb2.RetryInfo)
    bad = _unpack(status, error_details_pb2.BadRequest)
    quota = _unpack(status, error_details_pb2.QuotaFailure)
    return ErrorDetails(
        code=code,
        message=message,
        error_info=_error_info(info) if info is not None else None,
        retry_info=RetryInfo(retry_delay=retry.retry_delay.ToTimedelta()) if retry else None,
        bad_request=_bad_request(bad) if bad is not None else None,
        quota_failure=_quota_failure(quota) if quota is not None else None,
    )


def retry_delay(error: grpc.RpcError) -> timedelta | None:
    """The RetryInfo delay of a failed call, or None when it has none."""
    info = error_details(error).retry_info
    return info.retry_delay if info else None


def _code_and_message(error: grpc.RpcError) -> tuple[grpc.StatusCode, str]:
    code = getattr(error, "code", None)
    details = getattr(error, "details", None)
    return (
        code() if callable(code) else grpc.StatusCode.UNKNOWN,
        (details() or "") if callable(details) else "",
    )


def _unpack(status: status_pb2.Status, kind: type[_M]) -> _M | None:
    """The first detail of this kind (the gateway sends at most one of each)."""
    for packed in status.details:
        if packed.Is(kind.DESCRIPTOR):
            found = kind()
            packed.Unpack(found)
            return found
    return None


def _error_info(m: error_details_pb2.ErrorInfo) -> ErrorInfo:
    return ErrorInfo(
        reason=m.reason, domain=m.domain, metadata=MappingProxyType(dict(m.metadata.items()))
    )


def _bad_request(m: error_details_pb2.BadRequest) -> BadRequest:
    return BadRequest(
        field_violations=tuple(
            FieldViolation(field=v.field, description=v.description, reason=v.reason)
            for v in m.field_violations
        )
    )


def _quota_failure(m: error_details_pb2.QuotaFailure) -> QuotaFailure:
    return QuotaFailure(
        violations=tuple(
            QuotaViolation(subject=v.subject, description=v.description) for v in m.violations
        )
    )
