"""Helpers for calling LLM Gateway from Python; the generated stubs are in ``llmgateway.v1``.

``connect`` / ``connect_async`` open a channel with the caller's key and the recommended
configuration, ``error_details`` reads the rich error details of a failed call, ``assemble`` /
``assemble_async`` turn a stream into one CompleteResponse (``assemble_structured`` /
``assemble_structured_async`` a structured stream into a CompleteStructuredResponse), and
``call_with_retry`` /
``call_with_retry_async`` wait out a RESOURCE_EXHAUSTED that names its RetryInfo delay.
"""

from llmgateway.client.channels import (
    BearerKeyInterceptor,
    Transport,
    async_bearer_key_interceptors,
    bearer_credentials,
    channel_credentials,
    channel_options,
    connect,
    connect_async,
    service_config,
)
from llmgateway.client.errors import (
    BadRequest,
    ErrorDetails,
    ErrorInfo,
    FieldViolation,
    QuotaFailure,
    QuotaViolation,
    RetryInfo,
    error_details,
    retry_delay,
)
from llmgateway.client.retries import call_with_retry, call_with_retry_async
from llmgateway.client.streams import (
    IncompleteStreamError,
    StreamAssembler,
    StructuredStreamAssembler,
    assemble,
    assemble_async,
    assemble_structured,
    assemble_structured_async,
)

__all__ = [
    "BadRequest",
    "BearerKeyInterceptor",
    "ErrorDetails",
    "ErrorInfo",
    "FieldViolation",
    "IncompleteStreamError",
    "QuotaFailure",
    "QuotaViolation",
    "RetryInfo",
    "StreamAssembler",
    "StructuredStreamAssembler",
    "Transport",
    "assemble",
    "assemble_async",
    "assemble_structured",
    "assemble_structured_async",
    "async_bearer_key_interceptors",
    "bearer_credentials",
    "call_with_retry",
    "call_with_retry_async",
    "channel_credentials",
    "channel_options",
    "connect",
    "connect_async",
    "error_details",
    "retry_delay",
    "service_config",
]
