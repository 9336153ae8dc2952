"""The gateway's one error tree: what can go wrong, as data, free of gRPC and HTTP types.

Every failure the service reports is a ``GatewayError``. Its ``reason`` (one of ``Reason``)
becomes the ``google.rpc.ErrorInfo`` reason, ``metadata`` the ErrorInfo metadata,
``retry_after_s`` the ``RetryInfo`` delay. Each reason belongs to exactly one class: the
class's own ``reason``, or one of its ``refinements``. The gRPC status code for each class
lives in one table in ``service.api.status`` so that this module imports neither grpc nor
aiohttp; the README's "Errors" table is checked against both.

    GatewayError
    ├── InvalidRequestError          caller input is wrong (names the fields)
    ├── UnauthenticatedError         no or unknown caller key
    ├── PermissionDeniedError        model not allowed, or the caller's policy forbids it
    ├── QuotaExceededError           the caller's own RPM / TPM / budget
    ├── ResponseTooLargeError        the answer exceeds the gRPC message limit
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
from enum import StrEnum
from typing import ClassVar

ERROR_DOMAIN = "llmgateway.v1"
"""The ``ErrorInfo.domain`` of every error this service emits."""


class Reason(StrEnum):
    """Every ``ErrorInfo.reason`` the gateway emits; the README's "Errors" table lists each."""

    # The caller's request or identity.
    INVALID_ARGUMENT = "INVALID_ARGUMENT"
    UNKNOWN_SCHEMA = "UNKNOWN_SCHEMA"
    UNAUTHENTICATED = "UNAUTHENTICATED"
    API_KEY_MISSING = "API_KEY_MISSING"
    API_KEY_INVALID = "API_KEY_INVALID"
    MODEL_NOT_ALLOWED = "MODEL_NOT_ALLOWED"
    POLICY_VIOLATION = "POLICY_VIOLATION"
    UPSTREAM_POLICY_BREACH = "UPSTREAM_POLICY_BREACH"
    QUOTA_EXCEEDED = "QUOTA_EXCEEDED"
    RESPONSE_TOO_LARGE = "RESPONSE_TOO_LARGE"
    UNSUPPORTED_FEATURE = "UNSUPPORTED_FEATURE"
    SCHEMA_VALIDATION_FAILED = "SCHEMA_VALIDATION_FAILED"
    DEADLINE_EXCEEDED = "DEADLINE_EXCEEDED"
    # The gateway itself.
    SERVICE_UNAVAILABLE = "SERVICE_UNAVAILABLE"
    QUOTA_STORE_UNAVAILABLE = "QUOTA_STORE_UNAVAILABLE"
    INTERNAL = "INTERNAL"
    # OpenRouter or its provider.
    UPSTREAM_ERROR = "UPSTREAM_ERROR"
    UPSTREAM_BAD_REQUEST = "UPSTREAM_BAD_REQUEST"
    UPSTREAM_PAYLOAD_TOO_LARGE = "UPSTREAM_PAYLOAD_TOO_LARGE"
    UPSTREAM_UNPROCESSABLE = "UPSTREAM_UNPROCESSABLE"
    UPSTREAM_AUTH_FAILED = "UPSTREAM_AUTH_FAILED"
    UPSTREAM_PERMISSION_DENIED = "UPSTREAM_PERMISSION_DENIED"
    UPSTREAM_INSUFFICIENT_CREDITS = "UPSTREAM_INSUFFICIENT_CREDITS"
    CONTENT_FLAGGED = "CONTENT_FLAGGED"
    UPSTREAM_MODEL_NOT_FOUND = "UPSTREAM_MODEL_NOT_FOUND"
    UPSTREAM_RATE_LIMITED = "UPSTREAM_RATE_LIMITED"
    UPSTREAM_UNAVAILABLE = "UPSTREAM_UNAVAILABLE"
    UPSTREAM_TIMEOUT = "UPSTREAM_TIMEOUT"
    UPSTREAM_OVERLOADED = "UPSTREAM_OVERLOADED"
    UPSTREAM_CONNECTION_FAILED = "UPSTREAM_CONNECTION_FAILED"
    UPSTREAM_BAD_RESPONSE = "UPSTREAM_BAD_RESPONSE"
    UPSTREAM_STREAM_TRUNCATED = "UPSTREAM_STREAM_TRUNCATED"


MAX_QUOTED_CHARS = 128
"""The most of a caller's value an error message or ErrorInfo metadata repeats."""


def quoted(value: str) -> str:
    """A caller's value as an error may repeat it: cut to ``MAX_QUOTED_CHARS`` characters
    (with "…"), so a huge value never comes back in a status or its trailers."""
    if len(value) <= MAX_QUOTED_CHARS:
        return value
    return value[: MAX_QUOTED_CHARS - 1] + "…"


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
    ``refinements`` are the other reasons an instance of this class may carry.
    """

    # Plain (not ClassVar) so an instance may refine its class default.
    reason: Reason = Reason.INTERNAL
    refinements: ClassVar[tuple[Reason, ...]] = ()
    retryable: ClassVar[bool] = False

    def __init__(
        self,
        message: str,
        *,
        reason: Reason | None = None,
        metadata: Mapping[str, str] | None = None,
        retry_after_s: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        if reason is not None and reason is not self.reason:
            # e.g. UPSTREAM_OVERLOADED refines UpstreamUnavailableError's UPSTREAM_UNAVAILABLE.
            # Checked, so that the reason -> class (-> gRPC code) table stays the truth.
            if reason not in self.refinements:
                raise TypeError(f"{type(self).__name__} cannot carry the reason {reason}")
            self.reason = reason
        self.metadata: dict[str, str] = dict(metadata or {})
        self.retry_after_s = retry_after_s

    def __repr__(self) -> str:
        return f"{type(self).__name__}(reason={str(self.reason)!r}, message={self.message!r})"


class InvalidRequestError(GatewayError):
    """The request is malformed or out of range; ``violations`` names each bad field."""

    reason = Reason.INVALID_ARGUMENT
    refinements = (Reason.UNKNOWN_SCHEMA,)

    def __init__(
        self,
        message: str,
        violations: Sequence[FieldViolation] = (),
        *,
        reason: Reason | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message, reason=reason, metadata=metadata)
        self.violations: tuple[FieldViolation, ...] = tuple(violations)

    @classmethod
    def for_field(cls, field: str, description: str) -> InvalidRequestError:
        return cls(f"{field}: {description}", [FieldViolation(field, description)])


class UnauthenticatedError(GatewayError):
    reason = Reason.UNAUTHENTICATED
    refinements = (Reason.API_KEY_MISSING, Reason.API_KEY_INVALID)


class PermissionDeniedError(GatewayError):
    """The caller may not do this: a model outside its allow-list, a request its policy
    forbids (``POLICY_VIOLATION``, metadata ``rule`` and ``field``), or an answer served by a
    provider its policy forbids, withheld (``UPSTREAM_POLICY_BREACH``)."""

    reason = Reason.MODEL_NOT_ALLOWED
    refinements = (Reason.POLICY_VIOLATION, Reason.UPSTREAM_POLICY_BREACH)


class QuotaExceededError(GatewayError):
    """A caller's own limit ran out; retrying after ``retry_after_s`` may succeed."""

    reason = Reason.QUOTA_EXCEEDED
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


class ResponseTooLargeError(GatewayError):
    """An answer (or one stream message) is larger than the gateway may send
    (``GATEWAY_MAX_MESSAGE_BYTES``). Checked before sending: gRPC itself would fail the call
    with a bare RESOURCE_EXHAUSTED after the ledger had booked it OK. Sending the same request
    again gives the same answer, so it is not retryable; asking for less (``max_tokens``,
    fewer images or inputs) is."""

    reason = Reason.RESPONSE_TOO_LARGE

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(
            f"the answer is {size} bytes, more than the {limit} bytes the gateway may send; "
            "ask for less (max_tokens, fewer images or inputs)",
            metadata={"size_bytes": str(size), "limit_bytes": str(limit)},
        )
        self.size = size
        self.limit = limit


class UnsupportedFeatureError(GatewayError):
    reason = Reason.UNSUPPORTED_FEATURE


class SchemaValidationError(GatewayError):
    """Structured output did not match its schema, even after the repair attempts."""

    reason = Reason.SCHEMA_VALIDATION_FAILED


class DeadlineExceededError(GatewayError):
    reason = Reason.DEADLINE_EXCEEDED
    retryable = True


class ServiceUnavailableError(GatewayError):
    reason = Reason.SERVICE_UNAVAILABLE
    refinements = (Reason.QUOTA_STORE_UNAVAILABLE,)
    retryable = True


class InternalError(GatewayError):
    reason = Reason.INTERNAL


class UpstreamError(GatewayError):
    """OpenRouter (or the provider behind it) failed; ``status`` is the HTTP or error code.

    ``resend`` says whether the OpenRouter client sends the failed attempt again itself
    (with backoff, before anything reached the caller). It is narrower than ``retryable``:
    an unreadable answer may already have been billed, so resending it is the caller's call.
    """

    reason = Reason.UPSTREAM_ERROR
    resend: ClassVar[bool] = False

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        reason: Reason | None = None,
        metadata: Mapping[str, str] | None = None,
        retry_after_s: float | None = None,
    ) -> None:
        merged = dict(metadata or {})
        if status is not None:
            merged.setdefault("upstream_status", str(status))
        super().__init__(message, reason=reason, metadata=merged, retry_after_s=retry_after_s)
        self.status = status


class UpstreamBadRequestError(UpstreamError):
    reason = Reason.UPSTREAM_BAD_REQUEST
    refinements = (Reason.UPSTREAM_PAYLOAD_TOO_LARGE, Reason.UPSTREAM_UNPROCESSABLE)


class UpstreamAuthError(UpstreamError):
    """OpenRouter rejected the gateway's own key: an operator problem, not the caller's."""

    reason = Reason.UPSTREAM_AUTH_FAILED
    refinements = (Reason.UPSTREAM_PERMISSION_DENIED,)


class UpstreamPaymentError(UpstreamError):
    reason = Reason.UPSTREAM_INSUFFICIENT_CREDITS


class ModerationError(UpstreamError):
    reason = Reason.CONTENT_FLAGGED


class UpstreamModelNotFoundError(UpstreamError):
    reason = Reason.UPSTREAM_MODEL_NOT_FOUND


class UpstreamRateLimitError(UpstreamError):
    reason = Reason.UPSTREAM_RATE_LIMITED
    retryable = True
    resend = True


class UpstreamUnavailableError(UpstreamError):
    reason = Reason.UPSTREAM_UNAVAILABLE
    refinements = (
        Reason.UPSTREAM_TIMEOUT,
        Reason.UPSTREAM_OVERLOADED,
        Reason.UPSTREAM_CONNECTION_FAILED,
    )
    retryable = True
    resend = True


class UpstreamProtocolError(UpstreamError):
    reason = Reason.UPSTREAM_BAD_RESPONSE
    retryable = True


class StreamTruncatedError(UpstreamError):
    reason = Reason.UPSTREAM_STREAM_TRUNCATED
    retryable = True
    resend = True
