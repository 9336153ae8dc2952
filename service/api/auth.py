"""Caller identity from gRPC metadata: ``authorization: Bearer <key>``, or a client certificate.

Parsing is strict, because a lenient parser is where two components disagree about who is
calling: exactly one ``authorization`` value; the scheme ``Bearer`` in any case, then exactly
one space, then a key of visible ASCII characters (no spaces, no CR/LF or other control
characters, which grpc's clients refuse to send but a raw HTTP/2 client can).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable

from service.domain.callers import Caller, CallerRegistry
from service.errors import Reason, UnauthenticatedError

_SCHEME = "bearer"
# Visible ASCII only: RFC 6750's b64token is stricter, but caller keys are the operator's
# choice; whitespace and control characters are never part of one.
_KEY = re.compile(r"[\x21-\x7e]+")
MAX_AUTHORIZATION_CHARS = 4096
"""Longer ``authorization`` values are refused unread (keys are far shorter)."""

_MALFORMED = (
    "the 'authorization' value is malformed: expected 'Bearer <key>' with one space and no "
    "whitespace or control characters in the key"
)


def _malformed() -> UnauthenticatedError:
    return UnauthenticatedError(_MALFORMED, reason=Reason.API_KEY_INVALID)


def bearer_key(authorization: str | None) -> str | None:
    """The key of an ``authorization: Bearer <key>`` value; None for another scheme or no key.

    Raises ``UnauthenticatedError`` for a Bearer value that is malformed (never quoting it).
    """
    if authorization is None:
        return None
    if len(authorization) > MAX_AUTHORIZATION_CHARS:
        raise _malformed()
    if authorization[: len(_SCHEME)].lower() != _SCHEME:
        return None
    rest = authorization[len(_SCHEME) :]
    if not rest.strip(" "):
        return None  # "Bearer" or "Bearer ": no key at all
    if rest[0] != " ":
        if _KEY.match(rest[0]):
            return None  # a longer scheme name ("BearerToken …"), not ours
        raise _malformed()
    key = rest[1:]
    if _KEY.fullmatch(key) is None:
        raise _malformed()
    return key


class Authenticator:
    """Resolves the caller of an RPC.

    With mutual TLS, a client certificate whose common name is a caller id identifies that
    caller when no bearer key is sent (the CA configured for mTLS vouches for it).
    """

    def __init__(self, registry: CallerRegistry, *, trust_client_certificates: bool = False):
        self._registry = registry
        self._trust_certs = trust_client_certificates

    def authenticate(
        self,
        authorization: str | None,
        peer_common_names: Callable[[], Iterable[bytes] | None] | None = None,
        *,
        repeated: bool = False,
    ) -> Caller:
        """``authorization`` is the metadata value; ``peer_common_names`` is asked only when
        there is no bearer key and certificates are trusted (reading it is not free).
        ``repeated``: the call carried more than one ``authorization`` value, which is refused
        (which one would count is exactly what a proxy and the gateway could disagree on)."""
        if repeated:
            raise UnauthenticatedError(
                "more than one 'authorization' metadata value; send exactly one",
                reason=Reason.API_KEY_INVALID,
            )
        key = bearer_key(authorization)
        if key:
            caller = self._registry.authenticate(key)
            if caller is None:
                raise UnauthenticatedError(
                    "the caller key is not known", reason=Reason.API_KEY_INVALID
                )
            return caller
        names = peer_common_names() if self._trust_certs and peer_common_names else None
        if names:
            for name in names:
                caller = self._registry.get(name.decode("utf-8", "replace"))
                if caller is not None:
                    return caller
        raise UnauthenticatedError(
            "missing 'authorization: Bearer <key>' metadata", reason=Reason.API_KEY_MISSING
        )
