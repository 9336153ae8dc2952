"""Caller identity from gRPC metadata: ``authorization: Bearer <key>``, or a client certificate."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from service.domain.callers import Caller, CallerRegistry
from service.errors import Reason, UnauthenticatedError

_BEARER = "bearer "


def bearer_key(authorization: str | None) -> str | None:
    """The key of an ``authorization: Bearer <key>`` value; None for any other scheme."""
    if authorization and authorization[: len(_BEARER)].lower() == _BEARER:
        return authorization[len(_BEARER) :].strip()
    return None


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
    ) -> Caller:
        """``authorization`` is the metadata value; ``peer_common_names`` is asked only when
        there is no bearer key and certificates are trusted (reading it is not free)."""
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
