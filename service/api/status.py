"""The one table from domain errors to gRPC status codes, and rich status details.

Each error becomes a ``google.rpc.Status`` carrying ``ErrorInfo`` always, ``RetryInfo`` when a
delay is known, ``BadRequest`` for field violations and ``QuotaFailure`` for quotas.
"""

from __future__ import annotations

import math

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import error_details_pb2, status_pb2

from service import errors

# Looked up along the error's MRO, so a subclass inherits its parent's row unless it has one.
STATUS_BY_ERROR: dict[type[errors.GatewayError], grpc.StatusCode] = {
    errors.InvalidRequestError: grpc.StatusCode.INVALID_ARGUMENT,
    errors.UnauthenticatedError: grpc.StatusCode.UNAUTHENTICATED,
    errors.PermissionDeniedError: grpc.StatusCode.PERMISSION_DENIED,
    errors.QuotaExceededError: grpc.StatusCode.RESOURCE_EXHAUSTED,
    # What gRPC itself answers for a message over the limit, but with ErrorInfo.
    errors.ResponseTooLargeError: grpc.StatusCode.RESOURCE_EXHAUSTED,
    errors.UnsupportedFeatureError: grpc.StatusCode.FAILED_PRECONDITION,
    # The model could not produce valid JSON even after a repair: the caller can act (a simpler
    # schema, a stronger model); it is not a gateway fault that should page anyone (INTERNAL).
    errors.SchemaValidationError: grpc.StatusCode.FAILED_PRECONDITION,
    errors.DeadlineExceededError: grpc.StatusCode.DEADLINE_EXCEEDED,
    errors.ServiceUnavailableError: grpc.StatusCode.UNAVAILABLE,
    errors.InternalError: grpc.StatusCode.INTERNAL,
    errors.UpstreamError: grpc.StatusCode.UNAVAILABLE,
    errors.UpstreamBadRequestError: grpc.StatusCode.INVALID_ARGUMENT,
    # Our own OpenRouter key was refused: a misconfigured gateway, not the caller's fault.
    errors.UpstreamAuthError: grpc.StatusCode.INTERNAL,
    errors.UpstreamPaymentError: grpc.StatusCode.FAILED_PRECONDITION,
    errors.ModerationError: grpc.StatusCode.PERMISSION_DENIED,
    errors.UpstreamModelNotFoundError: grpc.StatusCode.NOT_FOUND,
    errors.UpstreamRateLimitError: grpc.StatusCode.RESOURCE_EXHAUSTED,
    errors.UpstreamUnavailableError: grpc.StatusCode.UNAVAILABLE,
    errors.UpstreamProtocolError: grpc.StatusCode.UNAVAILABLE,
    errors.StreamTruncatedError: grpc.StatusCode.UNAVAILABLE,
}


def status_code_for(error: errors.GatewayError) -> grpc.StatusCode:
    for cls in type(error).__mro__:
        code = STATUS_BY_ERROR.get(cls)
        if code is not None:
            return code
    return grpc.StatusCode.INTERNAL


def _pack(message: object) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)  # type: ignore[arg-type]
    return packed


def _duration(seconds: float) -> duration_pb2.Duration:
    whole = math.floor(seconds)
    return duration_pb2.Duration(seconds=whole, nanos=int((seconds - whole) * 1e9))


def to_rpc_status(error: errors.GatewayError, *, request_id: str = "") -> status_pb2.Status:
    code = status_code_for(error)
    metadata = dict(error.metadata)
    if request_id:
        metadata["request_id"] = request_id
    details = [
        _pack(
            error_details_pb2.ErrorInfo(
                reason=error.reason, domain=errors.ERROR_DOMAIN, metadata=metadata
            )
        )
    ]
    if error.retry_after_s is not None:
        details.append(
            _pack(error_details_pb2.RetryInfo(retry_delay=_duration(max(error.retry_after_s, 0))))
        )
    if isinstance(error, errors.InvalidRequestError) and error.violations:
        details.append(
            _pack(
                error_details_pb2.BadRequest(
                    field_violations=[
                        error_details_pb2.BadRequest.FieldViolation(
                            field=v.field, description=v.description
                        )
                        for v in error.violations
                    ]
                )
            )
        )
    if isinstance(error, errors.QuotaExceededError) and error.violations:
        details.append(
            _pack(
                error_details_pb2.QuotaFailure(
                    violations=[
                        error_details_pb2.QuotaFailure.Violation(
                            subject=v.subject, description=v.description
                        )
                        for v in error.violations
                    ]
                )
            )
        )
    return status_pb2.Status(code=code.value[0], message=error.message, details=details)


def internal_status(request_id: str) -> status_pb2.Status:
    """For a bug: a generic message, never the exception text (it may hold anything)."""
    return to_rpc_status(
        errors.InternalError("internal error; the request id identifies it in the logs"),
        request_id=request_id,
    )


__all__ = ["STATUS_BY_ERROR", "status_code_for", "to_rpc_status"]
