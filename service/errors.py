"""The gateway's one error tree: what can go wrong, as data, free of gRPC and HTTP types.

Every failure the service reports is a ``GatewayError``. Its ``reason`` becomes the
``google.rpc.ErrorInfo`` reason, ``metadata`` the ErrorInfo metadata, ``retry_after_s``
the ``RetryInfo`` delay. The gRPC status code for each class lives in one table in
``service.api.status`` so that this module imports neither grpc nor aiohttp.

    GatewayError
    ├── InvalidRequestError          caller input is wrong (names the fields)
    ├── UnauthenticatedError         no or unknown caller key
    ├── PermissionDeniedError        model not allowed for this caller
    ├── QuotaExceededError           the caller's own RPM / TPM / budget
    ├── UnsupportedFeatureError      the model cannot do what was asked
    ├── SchemaValidationError        structured output still invalid after repair
    ├── DeadlineExceededError        the caller's deadline (or our timeout) ran out
    ├── ServiceUnavailableError      the gateway itself cannot serve (draining, store down)
    ├── InternalError                a bug or a misconfiguration of the gateway
    └── UpstreamError                OpenRouter said no, or could not be understood
        ├── UpstreamBadRequestError      400, 413, 422
        ├── UpstreamAuthError            401, 403 on our own key (misconfigured gateway)
        ├── UpstreamPaymentError         402 (credits)
        ├── ModerationError              403 moderation / guardrail
        ├── UpstreamModelNotFoundError   404
        ├── UpstreamRateLimitError       429
        ├── UpstreamUnavailableError     408, 5xx, 524, 529, connection failures
        ├── UpstreamProtocolError        unparseable answer
        └── StreamTruncatedError         connection closed mid-stream
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar

ERROR_DOMAIN = "llmgateway.v1"
"""The ``ErrorInfo.domain`` of every error this service emits."""


@dataclass(frozen=True, slots=True)
class FieldViolation:
    """One bad field of a request: a dotted path (``messages[2].content``) and what is wrong."""

    field: str
    description: str


@dataclass(frozen=True, slots=True)
class QuotaViolation:
    """One exhausted quota: its subject (the caller) and which limit ran out."""

    subject: str
    description: str


class GatewayError(Exception):
    """Root of all domain errors.

    ``message`` must be safe to show a caller: never a key, prompt text or a raw upstream
    body. ``retryable`` says whether the same request may succeed if sent again.
    """

    # Plain (not ClassVar) so an instance may refine its class default.
    reason: str = "INTERNAL"
    retryable: ClassVar[bool] = False

    def __init__(
        self,
        message: str,
        *,
        reason: str | None = None,
        metadata: Mapping[str, str] | None = None,
        retry_after_s: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        if reason is not None:
            # e.g. UPSTREAM_OVERLOADED refines UpstreamUnavailableError's UPSTREAM_UNAVAILABLE.
            self.reason = reason
        self.metadata: dict[str, str] = dict(metadata or {})
        self.retry_after_s = retry_after_s

    def __repr__(self) -> str:
        return f"{type(self).__name__}(reason={self.reason!r}, message={self.message!r})"


class InvalidRequestError(GatewayError):
    """The request is malformed or out of range; ``violations`` names each bad field."""

    reason = "INVALID_ARGUMENT"

    def __init__(
        self,
        message: str,
        violations: Sequence[FieldViolation] = (),
        *,
        reason: str | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message, reason=reason, metadata=metadata)
        self.violations: tuple[FieldViolation, ...] = tuple(violations)

    @classmethod
    def for_field(cls, field: str, description: str) -> InvalidRequestError:
        return cls(f"{field}: {description}", [FieldViolation(field, description)])


class UnauthenticatedError(GatewayError):
    reason = "UNAUTHENTICATED"


class PermissionDeniedError(GatewayError):
    reason = "MODEL_NOT_ALLOWED"


class QuotaExceededError(GatewayError):
    """A caller's own limit ran out; retrying after ``retry_after_s`` may succeed."""

    reason = "QUOTA_EXCEEDED"
    retryable = True

    def __init__(
        self,
        message: str,
        violations: Sequence[QuotaViolation],
        *,
        retry_after_s: float | None,
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message, metadata=metadata, retry_after_s=retry_after_s)
        self.violations: tuple[QuotaViolation, ...] = tuple(violations)


class UnsupportedFeatureError(GatewayError):
    reason = "UNSUPPORTED_FEATURE"


class SchemaValidationError(GatewayError):
    """Structured output did not match its schema, even after the repair attempts."""

    reason = "SCHEMA_VALIDATION_FAILED"


class DeadlineExceededError(GatewayError):
    reason = "DEADLINE_EXCEEDED"
    retryable = True


class ServiceUnavailableError(GatewayError):
    reason = "SERVICE_UNAVAILABLE"
    retryable = True


class InternalError(GatewayError):
    reason = "INTERNAL"


class UpstreamError(GatewayError):
    """OpenRouter (or the provider behind it) failed; ``status`` is the HTTP or error code.

    ``resend`` says whether the OpenRouter client sends the failed attempt again itself
    (with backoff, before anything reached the caller). It is narrower than ``retryable``:
    an unreadable answer may already have been billed, so resending it is the caller's call.
    """

    reason = "UPSTREAM_ERROR"
    resend: ClassVar[bool] = False

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        reason: str | None = None,
        metadata: Mapping[str, str] | None = None,
        retry_after_s: float | None = None,
    ) -> None:
        merged = dict(metadata or {})
        if status is not None:
            merged.setdefault("upstream_status", str(status))
        super().__init__(message, reason=reason, metadata=merged, retry_after_s=retry_after_s)
        self.status = status


class UpstreamBadRequestError(UpstreamError):
    reason = "UPSTREAM_BAD_REQUEST"


class UpstreamAuthError(UpstreamError):
    """OpenRouter rejected the gateway's own key: an operator problem, not the caller's."""

    reason = "UPSTREAM_AUTH_FAILED"


class UpstreamPaymentError(UpstreamError):
    reason = "UPSTREAM_INSUFFICIENT_CREDITS"


class ModerationError(UpstreamError):
    reason = "CONTENT_FLAGGED"


class UpstreamModelNotFoundError(UpstreamError):
    reason = "UPSTREAM_MODEL_NOT_FOUND"


class UpstreamRateLimitError(UpstreamError):
    reason = "UPSTREAM_RATE_LIMITED"
    retryable = True
    resend = True


class UpstreamUnavailableError(UpstreamError):
    reason = "UPSTREAM_UNAVAILABLE"
    retryable = True
    resend = True


class UpstreamProtocolError(UpstreamError):
    reason = "UPSTREAM_BAD_RESPONSE"
    retryable = True


class StreamTruncatedError(UpstreamError):
    reason = "UPSTREAM_STREAM_TRUNCATED"
    retryable = True
    resend = True
